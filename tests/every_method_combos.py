"""The method x architecture combinations the contract tests (and the checkpointing tests) run."""

import leantune as lt

METHOD_CONFIGS = {
    "lora": lambda: lt.LoraConfig(r=4, alpha=8),
    "dora": lambda: lt.LoraConfig(r=4, alpha=8, use_dora=True),
    "ia3": lambda: lt.IA3Config(),
    "prompt": lambda: lt.PromptTuningConfig(num_virtual_tokens=4),
    "prefix": lambda: lt.PrefixTuningConfig(num_virtual_tokens=4, prefix_projection=True, encoder_hidden_size=16),
    "bottleneck": lambda: lt.BottleneckConfig(reduction_factor=4),
    "bitfit": lambda: lt.BitFitConfig(),
    "head": lambda: lt.HeadOnlyConfig(),
    "full": lambda: lt.FullConfig(),
    "lokr": lambda: lt.LoKrConfig(r=2, alpha=4),
    "oft": lambda: lt.OFTConfig(oft_block_size=8),
    "vera": lambda: lt.VeraConfig(r=16),
}
SUPPORTED = {
    "llama": ["lora", "dora", "ia3", "prompt", "prefix", "bottleneck", "full", "lokr", "oft", "vera"],
    "llama_cls": ["lora", "head"],
    "gpt2": ["lora", "dora", "ia3", "prompt", "prefix", "bottleneck", "bitfit", "full", "lokr", "oft", "vera"],
    "bert": ["lora", "dora", "ia3", "prompt", "bottleneck", "bitfit", "head", "full", "lokr", "oft", "vera"],
    "t5": ["lora", "dora", "ia3", "prompt", "bottleneck", "full", "lokr", "oft", "vera"],
}
COMBOS = [(arch, m) for arch, methods in SUPPORTED.items() for m in methods]
