"""The command line: ``python -m lightning_vit {fit,validate,test,predict} --config configs/....yaml``.

A LightningCLI over the project's tasks and DataModules with three additions:
- class names (and so ``num_classes``) come from the DataModule when the model config leaves them unset, and
  from the checkpoint's hyperparameters when ``--ckpt_path`` is given, so ``predict`` needs no dataset;
- every run writes to one directory ``<save_dir>/<name>/version_N`` shared by its loggers: TensorBoard and CSV
  metrics, the resolved ``config.yaml`` and ``checkpoints/`` (best and ``last.ckpt``);
  ``fit --ckpt_path last`` resumes the newest run of that name in its own directory, where ``metrics.csv`` keeps
  its rows up to the checkpoint and TensorBoard drops what the lost process logged after it;
- bad input (a missing dataset, an unreadable file, a wrong checkpoint) ends with a one-line message naming the
  file or config key, not a traceback;
- a ``bf16-mixed`` recipe runs in ``32-true`` on a CPU without bf16 kernels (AVX2-only processors), where bf16 is
  8-26x slower; ``LIGHTNING_VIT_CPU_BF16=keep`` keeps it.
"""

from __future__ import annotations

import csv
import difflib
import importlib
import inspect
import logging
import os
import re
import sys
import tempfile
import warnings
from pathlib import Path

import lightning as L
import torch
import yaml
from jsonargparse import Namespace
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from lightning_vit.backbones.pretrained import PretrainedError
from lightning_vit.callbacks import NonFiniteError, NonFiniteGuard, PredictionWriter, RandomState
from lightning_vit.datamodules import DatasetError
from lightning_vit.errors import OptionError, shorten
from lightning_vit.runtime import cpu_bf16_kernels

__all__ = ["LightningViTCLI", "main"]

log = logging.getLogger(__name__)


def _import(class_path: str) -> type:
    module, _, name = class_path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def _init_params(cls: type) -> set[str]:
    """Keyword names ``cls`` accepts, following ``**kwargs`` up the class hierarchy."""
    names = set()
    for klass in cls.__mro__:
        if "__init__" in vars(klass):
            params = inspect.signature(klass.__init__).parameters.values()
            names |= {p.name for p in params if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and p.name != "self"}
            if not any(p.kind == p.VAR_KEYWORD for p in params):
                break
    return names


def _concise(message: str) -> str:
    """Turn jsonargparse's nested union report into the one cause that matters, with a suggestion for typos."""
    key = re.search(r'Parser key "([^"]+)"', message)
    cause = re.search(r"Problem with given class_path '([^']+)':\s*(.+?)(?:\n\s*- Expected a|\Z)", message, re.S)
    if not (key and cause):
        return message
    class_path, detail = cause.group(1), " ".join(cause.group(2).split())
    typo = re.search(r"Option '([^']+)' is not accepted", detail)
    if typo:
        close = difflib.get_close_matches(typo.group(1), _init_params(_import(class_path)), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        return f"{key.group(1)}.init_args.{typo.group(1)}: not an option of {class_path}{hint}"
    return f"{key.group(1)} ({class_path}): {detail}"


class ConciseParser(LightningArgumentParser):
    """Parser errors as one cause and a pointer to ``--help``, without the 40-line usage block."""

    def error(self, message: str, ex: Exception | None = None) -> None:
        if not getattr(self, "exit_on_error", True):
            return super().error(message, ex)
        print(f"error: {_concise(message)}\nsee `python -m lightning_vit <subcommand> --help`", file=sys.stderr)
        raise SystemExit(2)


class LightningViTCLI(LightningCLI):
    """LightningCLI with class names from the data, one directory per run and resume of the last run."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(PredictionWriter, "prediction_writer")
        parser.add_lightning_class_args(NonFiniteGuard, "non_finite")
        parser.add_lightning_class_args(RandomState, "random_state")

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand]
        self._cpu_precision(config)
        self._fill_class_names(config)
        if self.subcommand == "fit":
            self._resolve_run_dir(config)
        if self.subcommand != "predict":
            self._check_checkpoint_classes(config)

    def before_fit(self) -> None:
        ckpt_path = self.config[self.subcommand].get("ckpt_path")
        if ckpt_path and Path(ckpt_path).is_file():
            continue_logs(self.trainer, ckpt_path)

    @staticmethod
    def _cpu_precision(config: Namespace) -> None:
        """``bf16-mixed`` on a CPU without bf16 kernels runs ``32-true``: there every bf16 matmul and convolution
        is emulated, 8x slower in inference and 26x in training than fp32 (CoaT-Lite Tiny on an AVX2-only AMD
        EPYC), while fp32 computes what bf16-mixed approximates and saves the same fp32 weights. ``bf16-true``
        (bf16 weights) is left as asked, with a warning."""
        precision = str(config.trainer.get("precision"))
        accelerator = config.trainer.get("accelerator")
        on_cpu = accelerator == "cpu" or (
            accelerator == "auto" and not torch.cuda.is_available() and not torch.backends.mps.is_available()
        )
        if not (on_cpu and precision in ("bf16-mixed", "bf16", "bf16-true")) or cpu_bf16_kernels():
            return
        keep = precision == "bf16-true" or os.environ.get("LIGHTNING_VIT_CPU_BF16", "").lower() == "keep"
        action = "kept" if keep else "running in 32-true (LIGHTNING_VIT_CPU_BF16=keep keeps bf16-mixed)"
        log.warning(
            "trainer.precision %s: this CPU has no bf16 kernels (no avx512), where bf16 runs emulated, 8-26x slower "
            "than fp32; %s",
            precision,
            action,
        )
        if not keep:
            config.trainer.precision = "32-true"

    @staticmethod
    def _fill_class_names(config: Namespace) -> None:
        args = config.model.init_args
        if "class_names" not in args or args.class_names is not None or args.get("num_classes") is not None:
            return
        datamodule = _import(config.data.class_path)(**config.data.init_args.as_dict())
        if hasattr(datamodule, "class_names"):
            args.class_names = list(datamodule.class_names)

    @staticmethod
    def _check_checkpoint_classes(config: Namespace) -> None:
        """A checkpoint resumed or evaluated on data of other classes: one line that points to fine-tuning, where
        Lightning would fail with a tensor-size traceback (or, at the last epoch already, train nothing)."""
        path = config.get("ckpt_path")
        if not (path and Path(path).is_file()):
            return
        from lightning_vit.tasks.loading import read_lightning_checkpoint

        trained = read_lightning_checkpoint(path)["hyper_parameters"].get("class_names")
        try:
            datamodule = _import(config.data.class_path)(**config.data.init_args.as_dict())
            current = list(datamodule.class_names) if hasattr(datamodule, "class_names") else None
        except DatasetError:  # the data's own error comes when the run reads it
            return
        if trained is None or current is None or list(trained) == current:
            return
        raise DatasetError(
            f"ckpt_path: {path} holds a model of {len(trained)} classes ({shorten(trained)}) but "
            f"{config.data.class_path.rpartition('.')[2]} gives {len(current)} ({shorten(current)}); --ckpt_path "
            f"continues that model on its own classes: to fine-tune it on this data, pass "
            f"--model.init_args.pretrained {path} instead"
        )

    @staticmethod
    def _resolve_run_dir(config: Namespace) -> None:
        """Give every logger the same version folder; map ``--ckpt_path last`` to the newest run's last.ckpt."""
        loggers = config.trainer.logger
        if not isinstance(loggers, list):
            loggers = [loggers] if isinstance(loggers, Namespace) else []
        dirs = {(lg.init_args.get("save_dir"), lg.init_args.get("name")) for lg in loggers}
        if len(dirs) != 1 or None in next(iter(dirs)):
            return
        root = Path(*next(iter(dirs)))
        versions = sorted(
            (int(m.group(1)), p) for p in root.glob("version_*") if (m := re.fullmatch(r"version_(\d+)", p.name))
        )
        if config.ckpt_path == "last":
            resumable = [p for _, p in versions if (p / "checkpoints" / "last.ckpt").is_file()]
            if not resumable:
                raise DatasetError(f"ckpt_path=last: no {root}/version_*/checkpoints/last.ckpt to resume from")
            version = resumable[-1].name
            config.ckpt_path = str(resumable[-1] / "checkpoints" / "last.ckpt")
        else:
            version = f"version_{versions[-1][0] + 1 if versions else 0}"
        for lg in loggers:
            if lg.init_args.get("version") is None:
                lg.init_args.version = version


def continue_logs(trainer: L.Trainer, ckpt_path: str | Path) -> None:
    """Let a run resumed in its own directory continue its logs instead of losing them.

    Lightning's CSVLogger deletes an existing ``metrics.csv`` when it starts; here the rows logged before the
    checkpoint (``step`` < its ``global_step``) are written back first, so the file holds the whole run once
    resumed, without the rows the lost process logged after its last checkpoint (the resumed run logs those steps
    again). TensorBoard loggers get ``purge_step``: TensorBoard then ignores the older events from that step on.
    Call before the loggers' first use; rank zero only.
    """
    loggers = [lg for lg in trainer.loggers if isinstance(lg, (CSVLogger, TensorBoardLogger))]
    if not trainer.is_global_zero or not loggers:
        return
    try:
        step = int(torch.load(ckpt_path, map_location="cpu", mmap=True, weights_only=True)["global_step"])
    except Exception:  # not a Lightning checkpoint of this project: Lightning reports it when it loads it
        return
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            kwargs = getattr(logger, "_kwargs", None)  # SummaryWriter's, passed when the logger starts it
            if (
                getattr(logger, "_experiment", None) is None
                and isinstance(kwargs, dict)
                and kwargs.get("purge_step") is None
            ):
                kwargs["purge_step"] = step
            continue
        path = Path(logger.log_dir) / "metrics.csv"
        if not path.is_file():
            continue
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            keys, rows = list(reader.fieldnames or []), [row for row in reader if _logged_before(row, step)]
        with warnings.catch_warnings():  # "Previous log files in this directory will be deleted": not these
            warnings.filterwarnings("ignore", message="Experiment logs directory")
            writer = logger.experiment  # starts the writer, which removes the file
        if rows:  # only rows with a step before the checkpoint's are kept
            writer.metrics_keys = sorted(keys)
            with path.open("w", newline="") as f:
                out = csv.DictWriter(f, fieldnames=writer.metrics_keys)
                out.writeheader()
                out.writerows(rows)


def _logged_before(row: dict[str, str], step: int) -> bool:
    try:
        return int(row["step"]) < step
    except (KeyError, TypeError, ValueError):  # no step column, or an empty / odd value
        return False


def _cli(args: list[str] | None) -> LightningViTCLI:
    return LightningViTCLI(
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        parser_class=ConciseParser,
        parser_kwargs={"prog": "python -m lightning_vit"},  # not __main__.py
        args=args,
    )


TOOLS = {"export": "lightning_vit.export", "benchmark": "lightning_vit.benchmark"}


def _option(argv: list[str], name: str) -> str | None:
    """The value of ``--name X`` or ``--name=X`` in ``argv``."""
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def config_from_checkpoint(ckpt_path: str | Path) -> dict:
    """The ``model`` and ``data`` sections a run was trained with, from its checkpoint's hyperparameters.

    This is what lets ``predict`` / ``validate`` / ``test`` run from ``--ckpt_path`` alone: the task, its class
    names and the DataModule (its eval transform; ``--data.predict_root`` points it at new images) come back as
    trained. Raises a PretrainedError naming the file when it is not a checkpoint of this project.
    """
    from lightning_vit.tasks.loading import read_lightning_checkpoint

    path = Path(ckpt_path)
    ckpt = read_lightning_checkpoint(path)
    config = {}
    for section, key in (("model", "hyper_parameters"), ("data", "datamodule_hyper_parameters")):
        hparams = ckpt.get(key)
        if not isinstance(hparams, dict) or "_class_path" not in hparams:
            raise PretrainedError(
                f"ckpt_path: {path} has no {key} with a _class_path (a checkpoint written by `lightning_vit fit` "
                "was expected); pass --config with the run's config.yaml instead"
            )
        init_args = {k: v for k, v in hparams.items() if not k.startswith("_")}
        config[section] = {"class_path": hparams["_class_path"], "init_args": init_args}
    return config


USER_ERRORS = (DatasetError, PretrainedError, OptionError)
#: Lightning's own names for checkpoints, resolved by the Trainer rather than read as files
CKPT_ALIASES = ("last", "best", "hpc", "registry")


def _message(err: BaseException) -> str:
    """The error's own message; for one re-raised from a DataLoader worker, without the worker's traceback."""
    text = str(err)
    if "Original Traceback" in text:  # torch's ExceptionWrapper: "...\nOriginal Traceback ...\nDatasetError: msg"
        text = text.strip().splitlines()[-1].split(": ", 1)[-1]
    return text


def _user_error_cause(err: BaseException) -> BaseException | None:
    """The DatasetError, PretrainedError or OptionError that ``err`` was raised from (its cause / context chain)."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, USER_ERRORS):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


def main(args: list[str] | None = None) -> LightningViTCLI | None:
    """Run the CLI; ``args`` as on the command line (``None`` reads ``sys.argv``).

    ``fit``, ``validate``, ``test`` and ``predict`` go to the LightningCLI; ``export`` and ``benchmark`` to their
    modules' own ``main(argv)``.
    """
    argv = sys.argv[1:] if args is None else list(args)
    if argv and argv[0] in TOOLS:
        try:
            return importlib.import_module(TOOLS[argv[0]]).main(argv[1:])
        except USER_ERRORS as err:
            print(f"error: {_message(err)}", file=sys.stderr)
            raise SystemExit(2) from None

    if argv in ([], ["-h"], ["--help"]):  # the LightningCLI's help lists its own subcommands only
        print(f"also: {', '.join(TOOLS)} (`python -m lightning_vit <tool> --help`)")
    import lightning_vit.datamodules  # noqa: F401  (registers the DataModules for class_path shorthands)
    import lightning_vit.tasks  # noqa: F401

    try:
        ckpt_path = _option(argv, "--ckpt_path")
        if argv and argv[0] in ("validate", "test", "predict") and ckpt_path and _option(argv, "--config") is None:
            with tempfile.TemporaryDirectory() as tmp:  # the run's own settings, then the command line's
                config = Path(tmp) / "from_checkpoint.yaml"
                config.write_text(yaml.safe_dump(config_from_checkpoint(ckpt_path)))  # checks the file too
                return _cli([argv[0], "--config", str(config), *argv[1:]])
        if ckpt_path and ckpt_path not in CKPT_ALIASES:  # a clear error before Lightning reads it
            from lightning_vit.tasks.loading import read_lightning_checkpoint

            read_lightning_checkpoint(ckpt_path)
        return _cli(args)
    except ValueError as err:  # a DatasetError / PretrainedError, raised directly or wrapped by jsonargparse
        cause = _user_error_cause(err)
        if cause is None:
            raise
        print(f"error: {_message(cause)}", file=sys.stderr)
        raise SystemExit(2) from None
    except MisconfigurationException as err:  # Lightning's own checks of the trainer's options and callbacks
        print(f"error: {_message(err)}", file=sys.stderr)
        raise SystemExit(2) from None
    except NonFiniteError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(1) from None
