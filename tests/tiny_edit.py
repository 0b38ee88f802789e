"""A MEMIT edit of the tiny model small enough for tests of everything around an edit (inputs, machine, files)."""

FAST = {"layers": [1, 2], "mom2_n_samples": 256, "v_num_grad_steps": 3, "use_prefixes": False}
EDIT = ["edit", "--model", "tiny-llama", "--limit", "2", "--no-eval", "--quiet", "--method", "memit",
        "--set", "layers=[1, 2]", "--set", "mom2_n_samples=256", "--set", "v_num_grad_steps=3",
        "--set", "use_prefixes=false"]
