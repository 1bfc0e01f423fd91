"""Fine-tuning and data engineering: cleaning, augmentation, splits, full/LoRA/prefix training, distillation."""
