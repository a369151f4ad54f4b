def test_tiny_model_builds(tiny_model):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    ids = tok.apply_chat_template([{"role": "user", "content": "port 8740"}], add_generation_prompt=True)
    assert len(ids["input_ids"] if hasattr(ids, "keys") else ids) > 5
    assert AutoModelForCausalLM.from_pretrained(tiny_model).config.num_hidden_layers == 2
