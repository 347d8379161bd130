"""linreg-sweep: Hydra jobs and sweeps over d2l's linear regression, tracked in MLflow."""
