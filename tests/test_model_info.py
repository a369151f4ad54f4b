import json

from assistant.model_info import BANDWIDTH_FILE, METHOD, dtype_lines, dtype_table, estimate_memory, memory_bandwidth

SMOLLM2 = {"hidden_size": 576, "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3,
           "head_dim": 64, "intermediate_size": 1536, "vocab_size": 49152, "tie_word_embeddings": True}


def test_estimate_memory_counts_smollm2_and_orders_the_dtypes():
    bf16 = estimate_memory(SMOLLM2, "bfloat16", 4096)
    assert abs(bf16["parameters"] - 134_515_008) / 134_515_008 < 0.01  # SmolLM2-135M, norms aside
    assert bf16["kv_cache_bytes"] == 2 * 30 * 3 * 64 * 4096 * 2
    sizes = {d: estimate_memory(SMOLLM2, d, 4096) for d in ("float32", "bfloat16", "int8-wo", "int4-wo")}
    streamed = [sizes[d]["bytes_per_token"] - sizes[d]["kv_cache_bytes"] for d in sizes]
    assert streamed == sorted(streamed, reverse=True)
    # int4: half a byte per weight plus a bf16 scale and zero per 32 weights
    linear = streamed[3] / (0.5 + 4 / 32)
    assert abs(linear - streamed[1] / 2) < 1


def test_bandwidth_keeps_the_highest_rate_measured(tmp_path):
    kept = tmp_path / BANDWIDTH_FILE

    def keep(**entry):
        kept.write_text(json.dumps(entry))

    rate = memory_bandwidth(tmp_path)
    assert rate > 1e8
    saved = json.loads(kept.read_text())
    assert saved["bytes_per_s"] == rate and saved["method"] == METHOD
    # a rate kept from an earlier, better run stays: a busy machine only ever measures lower
    keep(bytes_per_s=1e15, method=METHOD)
    assert memory_bandwidth(tmp_path) == 1e15
    # one measured on a busier machine than now is replaced by today's measurement
    keep(bytes_per_s=1e3, method=METHOD)
    now = memory_bandwidth(tmp_path)
    assert now > 1e8 and json.loads(kept.read_text())["bytes_per_s"] == now
    # not kept: a rate measured the old way (a copy), one that is not a finite positive number, an unreadable
    # file; refresh forgets even a good one
    for entry in ({"bytes_per_s": 1e15}, {"bytes_per_s": float("inf"), "method": METHOD},
                  {"bytes_per_s": -1, "method": METHOD}, ["not", "an", "object"]):
        kept.write_text(json.dumps(entry))
        assert 1e8 < memory_bandwidth(tmp_path) < 1e15, entry
    kept.write_text("{not json")
    assert memory_bandwidth(tmp_path) > 1e8
    keep(bytes_per_s=1e15, method=METHOD)
    assert memory_bandwidth(tmp_path, refresh=True) < 1e15
    assert json.loads(kept.read_text())["bytes_per_s"] < 1e15


def test_bandwidth_is_measured_in_a_home_that_cannot_be_written(tmp_path):
    blocked = tmp_path / "file"
    blocked.write_text("")  # the home "folder" is a file: nothing can be kept under it
    assert memory_bandwidth(blocked / "home") > 1e8
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / BANDWIDTH_FILE).mkdir()  # a folder where the file should be: not readable, not writable
    assert memory_bandwidth(tmp_path / "home") > 1e8


def test_dtype_table_bounds_tokens_per_second_by_bandwidth():
    rows = {r["dtype"]: r for r in dtype_table(SMOLLM2, "cpu", 2048, 2e10)}
    assert set(rows) == {"float32", "bfloat16", "float16", "int8", "int8-wo", "int4-wo"}
    assert rows["int4-wo"]["bandwidth_tokens_per_s"] > rows["int8-wo"]["bandwidth_tokens_per_s"] > \
        rows["bfloat16"]["bandwidth_tokens_per_s"] > rows["float32"]["bandwidth_tokens_per_s"]
    # 2e10 B/s over ~269 MB of bf16 weights read per token
    assert 70 < rows["bfloat16"]["bandwidth_tokens_per_s"] < 76
    assert "int8-wo" not in {r["dtype"] for r in dtype_table(SMOLLM2, "cuda", 2048, 2e10)}
    lines = dtype_lines({"context": 2048, "dtypes": list(rows.values())})
    assert len(lines) == 7 and lines[-1].split()[0] == "int4-wo"
