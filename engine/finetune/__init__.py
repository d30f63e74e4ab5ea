"""Fine-tuning: the model itself as the classifier, before and after LoRA, and domain adaptation.

One module per concern (this file holds nothing else):

    loop       the training loop: length-grouped batches, AdamW with warm-up and decay, bf16 autocast,
               per-epoch checkpoints (resume), early stopping on validation, live loss and validation metrics
    loading    models for training and their adapters: sequence classifier with a new head, LoRA
               targets and config, memory check, reloading a stored probe/LoRA or the LoRA-tuned backbone
    head       the `lora` step: train the adapters and the head, score the test split
    probe      the `linear-probe` step: a linear head trained on the cached embeddings (the backbone runs once)
    tuned_svc  the `lora-svc` step: the LoRA-tuned model's embeddings -> the frozen stage's SVC
    domain     the `domain-adapt` step: LoRA on the language-model objective, perplexity before/after
    adapted_svc  the `adapt-svc` step: that adaptation inside each fold, then the SVC on the adapted model's vectors

Splits: the test split is the frozen stage's (same seed and test_size); a stratified validation split
carved from the training split picks the epoch (early stopping) and is never the test split
(engine.protocols.three_way_split).
"""
