"""Code data curation: sources → language id → licences → quality filters → secrets/PII → decontamination → dedup → formatting → shards."""
