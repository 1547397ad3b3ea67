"""normlab.metrics: task metrics that torchmetrics does not provide in the needed form."""
