"""`hf-vq evaluate tokenizer|pipeline`: the metrics of `reports.py` from the command line, as one JSON result.

    hf-vq evaluate tokenizer PATH --dataset fashion-mnist --split test --output tok.json
    hf-vq evaluate pipeline PATH --per_class 50 --samples_dir runs/samples --output gen.json
    accelerate launch -m hf_vq.cli evaluate pipeline PATH ...   # samples sharded over processes
"""

from __future__ import annotations

import argparse
import inspect
import json
from pathlib import Path

DEFAULT_FEATURES = {"fashion-mnist": "fmnist"}  # other datasets: the FID Inception


def add_evaluate_arguments(sub: argparse._SubParsersAction, formatter: type) -> None:
    """Register `evaluate tokenizer` and `evaluate pipeline` on the `hf-vq` parser."""
    from ..pipelines.loading import GENERATOR_DTYPES
    from ..utils import add_overwrite_argument, device_arg, positive_int

    e = sub.add_parser("evaluate", help="metrics of a tokenizer or a pipeline, as JSON", formatter_class=formatter)
    kinds = e.add_subparsers(dest="target", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--dataset", default="fashion-mnist", help="dataset name, Hub id or image folder")
        p.add_argument("--features", default=None, choices=["fmnist", "inception", "none"],
                       help="feature network of the Fréchet distance (default: fmnist for fashion-mnist, else "
                            "inception, which needs --feature_weights or the pytorch-fid file in torch hub's cache)")
        p.add_argument("--feature_weights", default=None,
                       help="FID Inception .pth, or a classifier folder for --features fmnist (default: bundled)")
        p.add_argument("--batch_size", type=positive_int, default=100)
        p.add_argument("--skip_corrupt", action="store_true",
                       help="drop the dataset's unreadable images instead of stopping")
        p.add_argument("--device", default=None, type=device_arg,
                       help="default: cuda when available, else cpu (under a multi-process launch each process "
                            "uses its launcher's device, and --device is refused)")
        p.add_argument("--output", default=None, help="write the JSON result here (.json)")
        add_overwrite_argument(p)

    t = kinds.add_parser("tokenizer", help="PSNR, SSIM, LPIPS, codebook statistics, rFID / rfd_fmnist",
                         formatter_class=formatter)
    t.add_argument("model", help="tokenizer or pipeline folder, or Hub id")
    common(t)
    t.add_argument("--split", default="test")
    t.add_argument("--resolution", type=positive_int, default=None, help="default: the tokenizer's sample_size")
    t.add_argument("--max_images", type=positive_int, default=None)
    t.add_argument("--lpips_vgg", default=None, help="torchvision vgg16-397923af.pth (LPIPS is skipped without it)")
    t.add_argument("--lpips_weights", default=None, help="lpips v0.1 vgg.pth (default: from `pip install --no-deps "
                                                        "lpips`)")
    t.add_argument("--teacher", default=None,
                   help="VQ-KD: also the cosine of the predicted teacher features to this teacher's (folder or Hub id)")
    t.set_defaults(func=evaluate_tokenizer_command)

    g = kinds.add_parser("pipeline", help="gFID / fd_fmnist, IS, precision/recall, class accuracy, AR perplexity",
                         formatter_class=formatter)
    g.add_argument("model", nargs="?", default=None, help="pipeline folder or Hub id (default: the bundled model)")
    common(g)
    g.add_argument("--samples_dir", required=True, help="sample folder: resumed when it exists")
    g.add_argument("--per_class", type=positive_int, default=50,
                   help="samples per class (50 x 1000 classes = ADM's 50k)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--guidance_scale", type=float, default=None, help="default: the pipeline's")
    g.add_argument("--num_inference_steps", type=positive_int, default=None, help="NAR generators only")
    g.add_argument("--dtype", choices=list(GENERATOR_DTYPES), default="fp32",
                   help="the generator's weights (its logits stay fp32); recorded with the samples")
    g.add_argument("--compile", action="store_true",
                   help="AR generators: each decoding step as one compiled graph (CUDA graphs on a GPU)")
    g.add_argument("--max_batches", type=positive_int, default=None, help="stop after this many batches per process")
    add_reference_arguments(g)
    g.add_argument("--ppl_split", default="test", help="held-out split for the AR validation perplexity ('none': skip)")
    g.add_argument("--ppl_max_images", type=positive_int, default=None)
    g.set_defaults(func=evaluate_pipeline_command, multi_process=True)

    s = kinds.add_parser("samples", help="score an ADM .npz of samples (or a dataset split: the real-data floor)",
                         formatter_class=formatter)
    s.add_argument("samples", help="ADM-layout .npz (arr_0 images, arr_1 labels), or DATASET:SPLIT such as "
                                   "fashion-mnist:train to score real images against the reference")
    common(s)
    s.add_argument("--max_images", type=positive_int, default=None, help="for DATASET:SPLIT: the first N images")
    s.add_argument("--resolution", type=positive_int, default=None,
                   help="for DATASET:SPLIT: image size (as the samples')")
    s.add_argument("--channels", type=int, default=1, choices=[1, 3], help="for DATASET:SPLIT: as the samples'")
    add_reference_arguments(s)
    s.set_defaults(func=evaluate_samples_command)


def add_reference_arguments(p: argparse.ArgumentParser) -> None:
    """Where the reference batch comes from."""
    from ..utils import positive_int

    p.add_argument("--reference", default=None,
                   help="reference batch .npz (ADM arr_0 images, or a feature set hf-vq wrote); default: --dataset "
                        "--reference_split, whose features are saved beside the samples for the next run")
    p.add_argument("--reference_split", default="test")
    p.add_argument("--reference_max_images", type=positive_int, default=None)


def _reference(args: argparse.Namespace, network, size: int, channels: int, cache_dir: Path | None):
    """The reference feature set: --reference, a cached one in `cache_dir`, or computed from the dataset (and cached
    there when `cache_dir` is a folder this command writes to)."""
    from .feature_sets import dataset_images, feature_set_of_images, load_feature_set

    if args.reference:
        return load_feature_set(args.reference, network, args.batch_size, progress=True)
    limit = f"-first{args.reference_max_images}" if args.reference_max_images else ""
    name = (f"reference-{args.dataset.replace('/', '_')}-{args.reference_split}{limit}-{size}px-"
            f"{network.name}-{network.sha256[:12]}.npz")
    cached = cache_dir / name if cache_dir is not None else None
    if cached is not None and cached.is_file():
        return load_feature_set(cached, network)
    images, labels = dataset_images(args.dataset, args.reference_split, size, channels, args.reference_max_images,
                                    args.skip_corrupt)
    reference = feature_set_of_images(network, images, labels, f"{args.dataset}:{args.reference_split}",
                                      args.batch_size, progress=True)
    if cached is not None:
        reference.save(cached)
    return reference


def _set_device(args: argparse.Namespace, state=None) -> None:
    """Resolve --device: each process's own under a multi-process launch (where a --device was refused), else the
    flag, else cuda when available."""
    from ..utils import default_device

    if state is not None and state.num_processes > 1:
        args.device = str(state.device)
    else:
        args.device = args.device or default_device()


def _network(args: argparse.Namespace):
    from .features import load_feature_network

    name = args.features or DEFAULT_FEATURES.get(args.dataset, "inception")
    return None if name == "none" else load_feature_network(name, args.feature_weights, device=args.device)


def _check_output(args: argparse.Namespace) -> None:
    """Refuse, before any work, a --output that is not a writable .json path."""
    if args.output:
        from ..utils import check_output_file

        check_output_file(args.output, (".json",), "--output", args.overwrite)


def _finish(result: dict, args: argparse.Namespace) -> dict:
    """The result with the version and the device that computed it (features differ slightly between devices),
    printed and written to --output."""
    from .. import __version__
    from ..utils import write_file_atomic

    output = args.output
    result = {"hf_vq_version": __version__, **result, "device": args.device}
    text = json.dumps(result, indent=2)
    if output:
        write_file_atomic(output, lambda p: p.write_text(text + "\n"))
    print(text)
    return result


def evaluate_tokenizer_command(args: argparse.Namespace) -> dict:
    """`hf-vq evaluate tokenizer`."""
    from ..tokenizers import AutoImageTokenizer
    from .feature_sets import dataset_images
    from .reports import PROTOCOL, evaluate_tokenizer

    _check_output(args)
    _set_device(args)
    tokenizer = AutoImageTokenizer.from_pretrained(args.model)  # a pipeline's too
    tokenizer = tokenizer.to(args.device).eval()
    teacher = None
    if args.teacher:
        from ..tokenizers import FrozenTeacher

        if not hasattr(tokenizer, "predict_teacher_features"):
            raise ValueError(f"--teacher: a {type(tokenizer).__name__} does not predict teacher features")
        teacher = FrozenTeacher.from_pretrained(args.teacher).to(args.device)
    lpips_model = None
    if args.lpips_vgg or args.lpips_weights:
        from .lpips import LPIPS

        lpips_model = LPIPS.from_pretrained(args.lpips_vgg, args.lpips_weights).to(args.device)
    network = _network(args)
    resolution = args.resolution or tokenizer.sample_size
    if tokenizer.fixed_size and resolution != tokenizer.sample_size:
        raise ValueError(f"--resolution {resolution}: this tokenizer only takes {tokenizer.sample_size} px images")
    images, _ = dataset_images(args.dataset, args.split, resolution, tokenizer.in_channels, args.max_images,
                               args.skip_corrupt)
    if network is not None and tokenizer.can_decode:  # the rFD compares reconstructions with these images
        network.check_enough_images(len(images), f"{args.dataset}:{args.split}" + (
            f" (--max_images {args.max_images})" if args.max_images else ""))
    result = evaluate_tokenizer(tokenizer, images, network, lpips_model, teacher, args.batch_size, progress=True)
    measured = ["codebook"]
    if tokenizer.can_decode:
        measured += ["psnr_db", "ssim"] + (["lpips"] if lpips_model is not None else [])
        measured += ["frechet"] if network is not None else []
    else:
        result["note"] = "no pixel decoder (VQ-KD before stage 2): no reconstruction metrics"
    if teacher is not None:
        measured.append("teacher_cosine")
        result["teacher"] = args.teacher
    return _finish({"tokenizer": str(args.model), "dataset": args.dataset, "split": args.split, **result,
                    "protocol": {k: PROTOCOL[k] for k in measured}}, args)


def evaluate_pipeline_command(args: argparse.Namespace) -> dict | None:
    """`hf-vq evaluate pipeline` (under `accelerate launch`, sampling is sharded over the processes)."""

    from ..pipelines import bundled_model_path, load_pipeline
    from ..utils import check_device_flag, weights_digest
    from .feature_sets import dataset_images, feature_set_of_images
    from .perplexity import validation_perplexity
    from .reports import PROTOCOL, evaluate_generation
    from .sampling import generate_samples, load_samples, pipeline_sample_fn, process_state

    _check_output(args)
    check_device_flag(args.device)
    state = process_state()
    _set_device(args, state)
    network = _network(args)
    if network is None:
        raise ValueError("evaluate pipeline needs a feature network: --features fmnist or inception")
    model = args.model or str(bundled_model_path())
    pipe = load_pipeline(model, args.dtype, args.device)
    pipe.set_progress_bar_config(disable=True)
    autoregressive = getattr(pipe.transformer, "is_autoregressive", False)
    if args.compile and not autoregressive:
        raise ValueError("--compile is for AR generators (FAR/GPT); this pipeline's generator samples eagerly")
    # Every setting that changes the samples, defaults resolved, recorded with the samples and the result.
    recorded = {k: p.default for k, p in inspect.signature(type(pipe).__call__).parameters.items()
                if k in ("guidance_scale", "temperature", "top_k", "top_p")}
    if args.guidance_scale is not None:
        recorded["guidance_scale"] = args.guidance_scale
    steps = pipe.transformer.num_sampling_steps(args.num_inference_steps)  # refuses a count an AR model cannot take
    if not autoregressive:
        recorded["num_inference_steps"] = steps
    knobs = {**recorded, "compile": args.compile}
    recorded |= {"compile": args.compile, "dtype": args.dtype}
    num_classes = pipe.transformer.config.num_classes
    network.check_enough_images(num_classes * args.per_class, f"--per_class {args.per_class} x {num_classes} classes")
    if args.reference_max_images is not None and not args.reference:
        network.check_enough_images(args.reference_max_images, f"--reference_max_images {args.reference_max_images}")
    # The weights, not only the path: a folder rewritten by a resumed run must not finish the old model's samples.
    weights = {name: weights_digest(getattr(pipe, name)) for name in ("transformer", "vqvae")}
    settings = {"pipeline": model, "weights_sha256": weights, **recorded}
    ppl_data = None  # loaded and checked before sampling, so a bad held-out set fails before the long part
    if args.ppl_split != "none" and autoregressive:
        size = pipe.transformer.config.grid_size * pipe.vqvae.downsample_factor
        ppl_images, ppl_labels = dataset_images(args.dataset, args.ppl_split, size, pipe.vqvae.in_channels,
                                                args.ppl_max_images, args.skip_corrupt)
        if ppl_labels is None or ppl_labels.max() >= num_classes:
            found = "no class labels" if ppl_labels is None else f"labels up to {ppl_labels.max()}"
            raise ValueError(
                f"the AR perplexity needs held-out images of the generator's {num_classes} classes, but "
                f"{args.dataset}:{args.ppl_split} has {found}; pass the dataset it was trained on, or --ppl_split none"
            )
        ppl_data = (ppl_images, ppl_labels)
    path = generate_samples(pipeline_sample_fn(pipe, **knobs), args.samples_dir, num_classes, args.per_class,
                            args.seed, args.batch_size, settings, args.max_batches, progress=state.is_main_process)
    if path is None:
        print(f"sampling stopped after --max_batches; run the same command again to resume {args.samples_dir}")
        return None
    if not state.is_main_process:
        return None

    images, labels = load_samples(path)
    reference = _reference(args, network, images.shape[1], images.shape[3], Path(args.samples_dir))
    samples = feature_set_of_images(network, images, labels, str(path), args.batch_size, progress=True)
    same_classes = network.id2label is not None and {int(k): v for k, v in pipe.config.id2label.items()} == \
        network.id2label
    result = evaluate_generation(samples, reference, network.id2label if same_classes else None)

    if ppl_data is not None:
        import torch

        from .linear_probe import tokenize_images

        tokens = tokenize_images(pipe.vqvae, ppl_data[0], args.batch_size)
        batches = zip(tokens.split(args.batch_size), torch.from_numpy(ppl_data[1]).split(args.batch_size))
        result["ar_validation_perplexity"] = validation_perplexity(pipe.transformer, batches).to_dict()
        result["ppl_split"], result["ppl_max_images"] = args.ppl_split, args.ppl_max_images
    protocol = {k: PROTOCOL[k] for k in ("frechet", "score", "precision_recall")}
    return _finish({"pipeline": model, "samples": str(path), "dataset": args.dataset, "reference": reference.source,
                    "seed": args.seed,
                    "per_class": args.per_class, **recorded, **result, "protocol": protocol}, args)



def evaluate_samples_command(args: argparse.Namespace) -> dict:
    """`hf-vq evaluate samples`: distribution metrics of any sample file, or of real images (the floor)."""
    from .feature_sets import dataset_images, feature_set_of_images
    from .reports import PROTOCOL, evaluate_generation
    from .sampling import MANIFEST_NAME, load_samples

    _check_output(args)
    _set_device(args)
    network = _network(args)
    if network is None:
        raise ValueError("evaluate samples needs a feature network: --features fmnist or inception")
    if Path(args.samples).is_file():
        images, labels = load_samples(args.samples)
        # reuse a sample folder's saved reference; anywhere else cache only beside an --output we write
        parent = Path(args.samples).parent
        cache_dir = parent if (parent / MANIFEST_NAME).is_file() else Path(args.output).parent if args.output else None
    elif ":" in args.samples:
        if args.resolution is None:
            raise ValueError(f"scoring real images ({args.samples}) needs --resolution, the size of the samples")
        dataset, split = args.samples.rsplit(":", 1)
        images, labels = dataset_images(dataset, split, args.resolution, args.channels, args.max_images,
                                        args.skip_corrupt)
        cache_dir = Path(args.output).parent if args.output else None  # never write beside the user's files unasked
    else:
        raise FileNotFoundError(f"{args.samples}: no such .npz, and not DATASET:SPLIT")
    reference = _reference(args, network, images.shape[1], images.shape[3], cache_dir)
    samples = feature_set_of_images(network, images, labels, args.samples, args.batch_size, progress=True)
    result = evaluate_generation(samples, reference, network.id2label)
    protocol = {k: PROTOCOL[k] for k in ("frechet", "score", "precision_recall")}
    return _finish({"samples": args.samples, "reference": reference.source, **result, "protocol": protocol}, args)
