from setuptools import find_packages, setup

setup(
    name="distillation",
    version="0.1.0",
    description="Distil a Hugging Face Transformer teacher into a smaller student "
    "(DistilBERT-style MLM/CLM pretraining and task heads).",
    packages=find_packages(include=["distillation", "distillation.*"]),
    python_requires=">=3.9",
    install_requires=["torch", "transformers>=4.56", "tensorboard", "numpy", "tqdm", "safetensors"],
    entry_points={
        "console_scripts": [
            f"distil-{name.replace('_', '-')}=distillation.cli.{name}:main"
            for name in ("train", "extract", "extract_distilbert", "binarized_data", "token_counts",
                         "convert_gguf", "demo", "evaluate", "benchmark", "benchmark_losses", "benchmark_scale", "benchmark_offline",
                         "benchmark_generation", "benchmark_teachers", "benchmark_cross_tokenizer", "cache_teacher",
                         "generate_responses", "check_docs")
        ]
    },
    extras_require={
        # datasets + accelerate: the benchmark's hand-written Trainer recipe, which its test runs; peft: LoRA's tests;
        # nbclient + nbformat + ipykernel: the test that runs examples/distil_classifier.ipynb in a Jupyter kernel;
        # mkdocs: the test that builds the docs (mkdocs build --strict)
        "dev": ["pytest", "datasets", "accelerate", "peft", "nbclient", "nbformat", "ipykernel", "mkdocs"],
        "peft": ["peft"],  # --lora_r
        "datasets": ["datasets"],
        "gguf": ["gguf", "accelerate"],
    },
)
