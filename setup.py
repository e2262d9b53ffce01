"""Builds the probe object (make probe) before setuptools copies the package."""
import subprocess

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildWithProbe(build_py):
    def run(self):
        subprocess.run(["make", "probe"], check=True)
        super().run()


setup(cmdclass={"build_py": BuildWithProbe})
