"""Methods: every way ClinBench turns a model into a classifier, one module per method, on one harness.

base           the method contract: Method (key, prepare, fit, save, record), Fitted, Job
harness        the one place that plans, caches, loops over folds, decides and scores, for every method
vectors        an estimator on letter vectors, as a method: what svc, logreg, lora-svc and adapt-svc share
estimators     scikit-learn pipelines on letter vectors (SMOTE, search, calibrated SVC, logistic regression)
prompting      a causal LM as a classifier: prompt template, label words, log-likelihood scoring, calibration
svc            frozen embeddings -> calibrated SVC
logreg         frozen embeddings -> logistic regression
tfidf          the reference row: tf-idf + logistic regression
lora           LoRA fine-tuning with a classification head
linear_probe   a linear head on the cached embeddings
lora_svc       the LoRA-tuned model's embeddings -> SVC
domain_adapt   LoRA on the language-model objective
adapt_svc      domain adaptation per fold, then the SVC on the adapted vectors
setfit         contrastive tuning of a sentence encoder on pairs, then a logistic head
incontext      what zero-shot and few-shot share: examples, calibration, the prompted classifier
zero_shot      a generative model scores each label's words after the prompt
few_shot       the same, after worked examples from the training letters
instruct_lora  LoRA on prompt -> label words, then label likelihood
registry       the methods a spec may name
classifiers    one interface for every stored classifier: classes_, predict_proba(texts)
"""
