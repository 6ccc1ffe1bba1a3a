"""Training: the pretraining data path and loop, SFT and RL with verifiable rewards."""
