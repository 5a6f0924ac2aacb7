"""Readers of input checkpoints: config, safetensors shards, tokenizer."""
