"""Models: which ones exist, where their files are, and what they run on.

devices  CUDA or CPU, dtype, free memory
hub      the Hugging Face hub: local cache first, bounded time, clear offline errors
catalog  the registry (bundled, presets, hub ids, local folders, adapted models) and loading (pickles and a folder's own
         code refused unless the user opts in)
remote   a generative model on an OpenAI-compatible server (openai-compat:MODEL@URL): the allow-list, label log-likelihoods
         over HTTP
"""
