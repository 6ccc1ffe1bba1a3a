"""Models: the backends that eval, RL rollouts, agents and serving sample from (`codefoundry.models.backends`)."""
