"""The one thing pyproject.toml cannot say: two shipped files of the checkout's top folder, devices.yml and
checkpoints/*.pt, are installed at the top of the install (site-packages), beside the packages, where
`cli.paths.ROOT` finds them as it does in a checkout. An editable install reads them in the checkout itself."""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

TOP_FILES = ("devices.yml", "checkpoints/*.pt")


class BuildWithTopFiles(build_py):
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        for pattern in TOP_FILES:
            for source in sorted(Path().glob(pattern)):
                target = Path(self.build_lib) / source
                self.mkpath(str(target.parent))
                self.copy_file(str(source), str(target))

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        extra = [] if getattr(self, "editable_mode", False) else [
            str(Path(self.build_lib) / source) for pattern in TOP_FILES for source in sorted(Path().glob(pattern))]
        return [*super().get_outputs(include_bytecode), *extra]


setup(cmdclass={"build_py": BuildWithTopFiles})
