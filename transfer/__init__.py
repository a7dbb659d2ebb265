"""The transfer stage: task heads on a backbone, trained with labels from other spaces."""
