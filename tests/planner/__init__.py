"""Planner tests."""

# A Llama-3.1-8B-shaped Hugging Face config.json: the smallest config the planner can size a model from.
LLAMA_8B_SHAPE = {
    "hidden_size": 4096,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "intermediate_size": 14336,
    "vocab_size": 128256,
}
