"""Remote code written into exported model directories that no stock transformers class fits.

``configuration_llmnas.py`` and ``modeling_llmnas.py`` import only torch and transformers (never
llmnas): they are copied as they are next to ``config.json``, whose ``auto_map`` points at them, so
``AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True)`` loads the model anywhere.
"""
