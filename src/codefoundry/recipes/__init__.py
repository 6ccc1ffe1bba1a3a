"""Runnable recipes over the stages: `quickstart` (the whole chain end to end on laptop defaults)."""

from codefoundry.recipes.quickstart import Plan, QuickstartConfig, plan, quickstart

__all__ = ["Plan", "QuickstartConfig", "plan", "quickstart"]
