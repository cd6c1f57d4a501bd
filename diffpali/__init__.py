"""diffpali: Differential Attention retrofitted into PaliGemma, fine-tuned with LoRA."""
