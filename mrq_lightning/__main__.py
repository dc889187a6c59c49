"""``python -m mrq_lightning fit --config configs/gym.yaml``."""

from mrq_lightning.training.cli import main

if __name__ == "__main__":
    main()
