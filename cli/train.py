"""kdcache train-student and kdcache train-teacher."""

from __future__ import annotations

import click
from kdcache.cli.options import (
    SectionedCommand,
    config_option,
    data_options,
    library_errors,
    random_init_options,
    runtime_options,
    section,
    storage_option,
    view_options,
    view_overrides,
)

from kdcache._config import PRECISIONS
from kdcache._teacher_spec import TeacherSpec
from kdcache._utils import parse_model_args
from kdcache.data import DataConfig
from kdcache.train._lossconfig import DISTILL, FEATURE_LOSSES, TOPK_FILL, LossConfig
from kdcache.train._trainconfig import DECAY_RULES, SCHEDULES, TrainConfig

# The library (and torch with it) is imported when a command runs: --help and usage errors answer at once.

optim_options = section(
    "Training",
    click.option("--out", required=True, type=click.Path(file_okay=False),
                 help="Run directory (checkpoints, metrics.jsonl, config.json)."),
    click.option("--val-split", default=None,
                 help="Validation split: evaluated each epoch, selects best.pt ('none': best.pt is the last epoch) "
                      "[val with --val-fraction, else none; never the test split unless named]."),
    click.option("--test-split", default=None,
                 help="Evaluated once on best.pt after the last epoch, into OUT/test.json ('none' to skip) "
                      "[test, where the data has one]."),
    click.option("--seed", type=int, default=0, show_default=True),
    click.option("--epochs", type=click.IntRange(min=1), default=10, show_default=True),
    click.option("--batch-size", type=click.IntRange(min=1), default=128, show_default=True),
    click.option("--lr", type=float, default=1e-3, show_default=True,
                 help="Peak learning rate (before --scale-lr)."),
    click.option("--min-lr", type=float, default=1e-5, show_default=True),
    click.option("--weight-decay", type=float, default=0.05, show_default=True,
                 help="Decay of weights with ndim >= 2; none on norms, biases, or what the model's "
                      "no_weight_decay() names (ViT tokens, position embedding): timm's rule."),
    click.option("--warmup-epochs", type=float, default=1.0, show_default=True),
    click.option("--label-smoothing", type=float, default=0.0, show_default=True),
    click.option("--grad-clip", type=float, default=None, help="Clip the gradient norm."),
    click.option("--amp/--no-amp", default=False, show_default=True,
                 help="Mixed precision on CUDA (bf16 where supported, else fp16); see --precision."),
    click.option("--resume", is_flag=True, help="Continue from OUT/last.pt."),
    click.option("--overwrite", is_flag=True, help="Replace the run already in OUT (its checkpoints and metrics)."),
    click.option("--max-steps-per-epoch", type=click.IntRange(min=1), default=None,
                 help="Cap the steps of each epoch (quick runs)."),
)


recipe_options = section(
    "Recipe",
    click.option("--optimizer", default=TrainConfig.optimizer, show_default=True,
                 help="adamw | sgd, or any timm optimizer (lamb, lars, adan, ...) when timm is installed."),
    click.option("--sched", type=click.Choice(SCHEDULES), default=TrainConfig.sched, show_default=True,
                 help="Learning rate after the warm-up: cosine decay to --min-lr, or constant at --lr."),
    click.option("--decay-rule", type=click.Choice(DECAY_RULES), default=TrainConfig.decay_rule,
                 show_default=True,
                 help="timm: no weight decay on norms, biases, ViT tokens and position embeddings; all: decay "
                      "every parameter (Keras's and TF-Addons' AdamW)."),
    click.option("--momentum", type=click.FloatRange(0, 1, max_open=True), default=TrainConfig.momentum,
                 show_default=True, help="SGD momentum."),
    click.option("--nesterov", is_flag=True, help="Nesterov momentum (SGD)."),
    click.option("--scale-lr", is_flag=True,
                 help="Scale --lr by the global batch: lr x batch-size x accum-steps x processes / 512 (DeiT)."),
    click.option("--accum-steps", type=click.IntRange(min=1), default=1, show_default=True,
                 help="Accumulate K batches per optimiser step (global batch = batch-size x K x processes)."),
    click.option("--ema-decay", type=float, default=None,
                 help="Keep a model EMA with this decay in (0, 1), e.g. 0.9998; evaluated each epoch beside the "
                      "model and saved in checkpoints."),
    click.option("--ema-warmup/--no-ema-warmup", default=True, show_default=True,
                 help="EMA decay min(decay, (1 + t) / (10 + t)) at update t."),
    click.option("--ema-select", is_flag=True,
                 help="The EMA is the checkpoints' model: best.pt is chosen by its val top-1; evaluate, "
                      "dump-teacher and the Python API load it."),
    click.option("--precision", type=click.Choice(PRECISIONS), default="fp32", show_default=True,
                 help="Autocast precision on any device; fp16 uses a grad scaler."),
    click.option("--channels-last", is_flag=True, help="Model and inputs in channels-last memory format."),
    click.option("--compile", "compile_", is_flag=True,
                 help="torch.compile the model (first steps are slow while it compiles)."),
    click.option("--compile-backend", default=TrainConfig.compile_backend, show_default=True,
                 help="torch.compile backend."),
    click.option("--log-interval", type=click.IntRange(min=1), default=TrainConfig.log_interval, show_default=True,
                 help="Batches between the loop's device read-backs (progress bar, finiteness check)."),
)


def _common(data, split, limit, subset_seed, val_fraction, out, val_split, test_split, epochs, batch_size, lr, min_lr,
            weight_decay,
            warmup_epochs, label_smoothing, grad_clip, amp, resume, overwrite, max_steps_per_epoch, seed, device,
            workers, optimizer, sched, decay_rule, momentum, nesterov, scale_lr, accum_steps, ema_decay, ema_warmup, ema_select,
            precision, channels_last, compile_, compile_backend, log_interval):
    return dict(
        data=DataConfig(source=data, split=split, limit=limit, subset_seed=subset_seed, val_fraction=val_fraction),
        out=out, val_split=_split_option(val_split), test_split=_split_option(test_split), epochs=epochs,
        batch_size=batch_size,
        lr=lr, min_lr=min_lr, weight_decay=weight_decay, warmup_epochs=warmup_epochs, grad_clip=grad_clip,
        amp=amp, resume=resume, overwrite=overwrite, max_steps_per_epoch=max_steps_per_epoch, seed=seed, device=device,
        workers=workers, optimizer=optimizer, sched=sched, decay_rule=decay_rule, momentum=momentum, nesterov=nesterov, scale_lr=scale_lr,
        accum_steps=accum_steps, ema_decay=ema_decay, ema_warmup=ema_warmup, ema_select=ema_select,
        precision=precision, channels_last=channels_last, compile=compile_, compile_backend=compile_backend,
        log_interval=log_interval), label_smoothing


def _student_data(cache: str | None, storage_options, kw: dict) -> DataConfig:
    """train-student's data: with --cache, the data the cache records (its source, split and subset), each data
    option given replacing its part; without, the options (digits' train split by default)."""
    given = {k: kw[k] for k in ("split", "limit", "subset_seed", "val_fraction")} | {"source": kw["data"]}
    if cache is None:
        defaults = {"source": "digits", "split": "train", "subset_seed": 0, "val_fraction": 0.0}
        return DataConfig(**{k: v if v is not None else defaults.get(k) for k, v in given.items()})
    from kdcache.cache import CacheStore
    from kdcache.engine._verify import cache_data

    return cache_data(CacheStore.open(cache, storage_options=storage_options), given)


def _split_option(given: str | None) -> str | None:
    if given is None:
        return "auto"  # the library's default (kdcache.train._heldout)
    return None if given.lower() == "none" else given


def _report(result: dict) -> None:
    if result.get("rank", 0) != 0:
        return
    best, test = result["best_top1"], result.get("test")
    top1 = f"best val top-1 {best:.2f}%  " if best is not None else ""
    if test:
        top1 += f"test top-1 {test['top1']:.2f}% ({test['split']}, best.pt)  "
    click.echo(f"{top1}checkpoints: {result['best']}, {result['last']}")


@click.command("train-student", cls=SectionedCommand)
@config_option
@data_options(from_cache=True)
@section(
    "Teacher (a cache, or the online reference)",
    click.option("--cache", default=None,
                 help="Teacher cache made by dump-teacher (path or fsspec URL). With --online-teacher: only its views."),
    storage_option,
    click.option("--online-teacher", "teacher", default=None,
                 help="Reference run: load this teacher and pay its forward pass at every step, on fresh views "
                      "(online KD through the same loop); --cache is then optional."),
    click.option("--online-cache-teachers", is_flag=True,
                 help="Reference run of a cached row: the cache's own teachers (--teachers, --feature-teacher), "
                      "built as the cache records them, run online on fresh views of its view spec at every step."),
    click.option("--teacher-weights", type=click.Path(exists=True), default=None,
                 help="Weights of the --online-teacher (checkpoint, state dict, .safetensors or checkpoint "
                      "directory; torch files load with weights_only=True)."),
    click.option("--teacher-arg", "teacher_args", multiple=True,
                 help="KEY=VALUE for the --online-teacher's constructor (repeatable)."),
    *random_init_options,
    click.option("--views-per-image", type=click.IntRange(min=1), default=1, show_default=True,
                 help="Replay M cached views from each decoded image (FKD's trick): one pass over the data "
                      "trains M epochs; --epochs must be a multiple of M."),
    click.option("--repeated-views", type=click.IntRange(min=1), default=1, show_default=True,
                 help="Repeated augmentation from the cache (DeiT's RASampler, at no teacher cost): each epoch "
                      "trains on 1/R of the images (a new share every epoch), each with R of its cached views in "
                      "one batch (trained in the same step); an epoch keeps N samples. Excludes --views-per-image."),
    click.option("--target-memory-mb", type=click.IntRange(min=1), default=TrainConfig.target_memory_mb,
                 show_default=True,
                 help="Cached targets held in memory at once per process. An epoch whose targets fit is "
                      "shuffled whole; a larger one streams in windows of cache blocks, shuffled within."),
)
@click.option("--student", required=True, help="Student model name (see 'kdcache models').")
@click.option("--student-arg", "model_args", multiple=True,
              help="KEY=VALUE for the student's constructor (repeatable), e.g. small_input=true, drop_path_rate=0.1.")
@click.option("--distill", type=click.Choice(DISTILL), default="soft", show_default=True,
              help="soft: KL at temperature T (×T²); hard: CE on the teacher's argmax (DeiT); none: no logit "
                   "distillation (labels, and --feature-weight).")
@click.option("--no-distill", is_flag=True, help="Train the same student from labels only (the baseline).")
@click.option("--alpha", type=float, default=0.5, show_default=True, help="Weight of the distillation loss.")
@click.option("--temperature", "-T", type=float, default=4.0, show_default=True)
@click.option("--teachers", default="main", show_default=True,
              help="Whose logits to distil, by name in the cache ('main': the dump's teacher; others added with "
                   "add-teacher); several, comma-separated, distil their ensemble: the weighted mean of their "
                   "probabilities at temperature T.")
@click.option("--ensemble-weights", default=None, metavar="W1,W2,...",
              help="One weight per --teachers entry [equal].")
@click.option("--feature-teacher", default="main", show_default=True,
              help="Whose embedding --feature-weight matches (a teacher of the cache with an embedding).")
@click.option("--feature-weight", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="Feature distillation (timm's 'feature' task): weight of a loss between the student's pooled "
                   "embedding, through a learned linear projection, and the teacher's cached one (a cache dumped "
                   "with --embed pooled). The projection is not part of the exported student.")
@click.option("--feature-loss", type=click.Choice(FEATURE_LOSSES), default="cosine",
              show_default=True, help="cosine: 1 - cosine similarity; smooth_l1; mse.")
@click.option("--task-weight", type=click.FloatRange(min=0), default=None,
              help="Weight of the label loss [1 - alpha while distilling logits, else 1]; 0 trains without labels.")
@click.option("--topk-fill", type=click.Choice(TOPK_FILL), default="spread", show_default=True,
              help="How a top-k cache's missing classes are rebuilt (docs/cache-format.md).")
@view_options
@optim_options
@recipe_options
@runtime_options
@library_errors
def train_student_cmd(cache, storage_options, teacher, online_cache_teachers, teacher_weights, teacher_args,
                      random_init, init_seed, views_per_image, repeated_views, target_memory_mb, student,
                      model_args, distill, no_distill, alpha, temperature, teachers, ensemble_weights, feature_teacher,
                      feature_weight, feature_loss, task_weight, topk_fill, progress, **kw):
    """Train a student from a teacher cache, replaying each cached view exactly.

    The teacher is never loaded: each epoch takes one cached view per sample, rebuilds it from its
    recorded parameters and learns from the teacher's targets for that view.

    With --online-teacher NAME the run is the online reference instead: it loads the teacher and
    pays its forward pass at every step, on a fresh view per sample and epoch drawn from the cache's
    view spec (or, without --cache, the teacher's input plus the view options), through the same
    loop, loss, optimiser and schedule. View options apply only without --cache.

    \b
    Example:
      kdcache train-student --cache cifar-r56.zarr \\
          --student deit_tiny_patch4_32_distilled --distill hard --epochs 100 --out runs/deit
      # an ensemble of the cache's teachers (kdcache add-teacher)
      kdcache train-student --cache cifar-r56.zarr --teachers main,r20,r32 --student resnet8 --out runs/ens
      # its online reference: the same teachers run at every step on fresh views
      kdcache train-student --cache cifar-r56.zarr --teachers main,r20,r32 --online-cache-teachers ...
    """
    view = view_overrides(kw)
    if teacher is None and (teacher_weights or teacher_args or random_init):
        raise click.UsageError("--teacher-weights, --teacher-arg and --random-init need --online-teacher")
    if cache is None and teacher is None:
        raise click.UsageError("give --cache (cached training) or --online-teacher (the online reference)")
    online = None
    if teacher is not None:
        online = TeacherSpec(name=teacher, weights=teacher_weights, kwargs=parse_model_args(teacher_args),
                             random_init=random_init, init_seed=init_seed)
    data = _student_data(cache, storage_options, kw)
    kw.update(data=data.source, split=data.split, limit=data.limit, subset_seed=data.subset_seed,
              val_fraction=data.val_fraction)
    common, ls = _common(**kw)
    common["data"] = data
    loss = LossConfig(distill="none" if no_distill else distill, alpha=alpha, temperature=temperature,
                      label_smoothing=ls, topk_fill=topk_fill, feature_weight=feature_weight,
                      feature_loss=feature_loss, task_weight=task_weight, teachers=_names(teachers),
                      ensemble_weights=_weights(ensemble_weights), feature_teacher=feature_teacher)
    cfg = TrainConfig(model=student, model_kwargs=parse_model_args(model_args), cache=cache, teacher=online,
                      online_cache_teachers=online_cache_teachers, loss=loss, view=view, storage_options=storage_options,
                      views_per_image=views_per_image, repeated_views=repeated_views,
                      target_memory_mb=target_memory_mb, **common)
    from kdcache.train import train_student

    _report(train_student(cfg, progress=progress, log=click.echo))


@click.command("train-teacher", cls=SectionedCommand)
@config_option
@data_options()
@click.option("--teacher", required=True, help="Teacher model name (see 'kdcache models').")
@click.option("--teacher-arg", "model_args", multiple=True,
              help="KEY=VALUE for the teacher's constructor (repeatable), e.g. pretrained=true.")
@click.option("--init-weights", type=click.Path(exists=True), default=None,
              help="Fine-tune from these weights (checkpoint, state dict, .safetensors or checkpoint directory).")
@view_options
@optim_options
@recipe_options
@runtime_options
@library_errors
def train_teacher_cmd(teacher, model_args, init_weights, progress, **kw):
    """Train or fine-tune a teacher on labels; writes a checkpoint dump-teacher accepts.

    Every epoch draws a fresh augmented view per sample (seeded by seed, sample key and epoch).
    """
    view = view_overrides(kw)
    common, ls = _common(**kw)
    cfg = TrainConfig(model=teacher, model_kwargs=parse_model_args(model_args), init_weights=init_weights, view=view,
                      loss=LossConfig(distill="none", label_smoothing=ls), **common)
    from kdcache.train import train_teacher

    _report(train_teacher(cfg, progress=progress, log=click.echo))


def _names(text: str) -> tuple[str, ...]:
    return tuple(n.strip() for n in text.split(",") if n.strip())


def _weights(text: str | None) -> tuple[float, ...]:
    if not text:
        return ()
    try:
        return tuple(float(w) for w in text.split(","))
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a comma-separated list of numbers",
                                 param_hint="--ensemble-weights") from None
