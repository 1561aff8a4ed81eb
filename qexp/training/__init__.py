"""What trains a model: the LightningModule, a resumable fit, its epoch log, the precision choice, and the learning
curves of finished runs (``python -m qexp.training.curves``)."""
