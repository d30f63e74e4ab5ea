"""Training a model: the loop every fine-tuning method shares, and loading models for training and reuse.

dropout       cheap dropout masks for CPU training
loop          the training loop: batches, AdamW with warm-up and decay, checkpoints, early stopping, live curves
loading       models for training and their adapters; reloading a stored LoRA or probe
lm_objective  a model trained on its own objective (masked or causal LM): masking, perplexity, LoRA adapters
generation    written answers of a causal LM: batched greedy generation, ROUGE-L and BLEU
"""
