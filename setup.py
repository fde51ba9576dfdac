from setuptools import find_packages, setup

setup(
    name="worldmodel",
    version="0.1.0",
    description="Controllable multi-view video world models for robot manipulation, trained on LeRobot datasets",
    python_requires=">=3.11",
    packages=find_packages(include=["worldmodel", "worldmodel.*"]),
    install_requires=[
        "torch",
        "diffusers",
        "accelerate",
        "einops",
        # LeRobotDataset v3 (meta/episodes, chunked files) first shipped in lerobot 0.4.0.
        "lerobot>=0.4.0",
        "opencv-python-headless",
        "av",
        "metaworld",
        "mujoco",
        "tqdm",
        "draccus",
        "tensorboard",
        "scipy",
        "starlette",
        "uvicorn",
        "websockets",
    ],
    # playwright drives Debian's chromium in the browser test (no browser download).
    extras_require={"dev": ["pytest", "pytest-timeout", "pandas", "pyarrow", "playwright", "httpx", "nbclient", "nbformat", "ipykernel"]},
    entry_points={"console_scripts": ["wm=worldmodel.cli:main"]},
)
