"""Class activation maps page: what each variant looks at, side by side."""

import os
from pathlib import Path

import numpy as np
import streamlit as st
from PIL import Image

from effnet import runs
from effnet.cam import (
    METHOD_NOTES,
    METHODS,
    SHOWN_MIN_SIDE,
    colour_bar,
    default_device,
    explain,
    for_display,
    imagenet_model,
    load_image,
    overlay,
    run_model,
)
from effnet.data import DataError, dataset_present, load_cifar100
from effnet.scaling import OFFICIAL, ScalingSpec

DEVICE = default_device()
TOP = "(top prediction)"


@st.cache_resource(max_entries=8, show_spinner="Loading the model...")
def cached_run_model(path: str, mtime: float):
    """Loaded once per checkpoint version and shared by every session (``mtime`` renews it)."""
    return run_model(Path(path), DEVICE)


@st.cache_resource(max_entries=2, show_spinner="Loading ImageNet weights...")
def cached_imagenet_model(variant: str):
    return imagenet_model(variant, DEVICE)


@st.cache_resource(show_spinner="Reading CIFAR-100...")
def cifar_test():
    return load_cifar100(download=False)


st.title("Class activation maps")
st.caption("Where does each model look? The map is computed on the last feature map of at least 4x4 "
           "and drawn over the whole image (viridis: bright = strong evidence).")

usable = [i for i in runs.list_runs() if not i.damaged and runs.shown_checkpoint(i.path) is not None]
by_id = {i.run_id: i for i in usable}

controls, source = st.columns([1, 1], gap="large")
with controls:
    chosen_runs = st.multiselect("Trained runs to compare", list(by_id), default=list(by_id)[:4],
                                 format_func=lambda rid: f"{by_id[rid].label} · {rid}", key="cam_runs")
    chosen_imagenet = st.multiselect("torchvision ImageNet weights (for photos; downloaded once)",
                                     [v.upper() for v in OFFICIAL], key="cam_imagenet")
    method = st.selectbox("Method", list(METHODS), key="cam_method",
                          format_func=lambda m: {"gradcam": "Grad-CAM", "gradcam++": "Grad-CAM++",
                                                 "scorecam": "Score-CAM (slow)", "eigencam": "EigenCAM"}[m])
    st.caption(METHOD_NOTES[method])
    alpha = st.slider("Map opacity", 0.0, 1.0, 0.5, 0.05, key="cam_alpha",
                      help="0: the image alone; 1: the map alone. Lower it to see the object under the map.")
    if method == "scorecam":
        b0_head = ScalingSpec.official("b0").head_channels
        st.warning(f"Score-CAM runs one forward pass per channel of the target layer ({b0_head:,} for B0): seconds "
                   "per model on a CPU, longer for wide models.")

models = []
for rid in chosen_runs:
    info = by_id[rid]
    checkpoint = runs.shown_checkpoint(info.path)
    try:
        model, spec, names = cached_run_model(str(info.path), os.path.getmtime(checkpoint))
        models.append((f"{info.label}", model, spec, names))
    except (runs.CheckpointError, ValueError, OSError) as exc:
        controls.error(f"{info.label}: {exc}")
for variant in chosen_imagenet:
    try:
        model, spec, names = cached_imagenet_model(variant.lower())
        models.append((f"{variant} (ImageNet)", model, spec, names))
    except RuntimeError as exc:
        controls.error(f"{variant} ImageNet weights are unavailable here. {exc}")

with controls:
    cifar_names = next((m[3] for m in models if m[2].num_classes == 100), None)
    explain_cifar = st.selectbox("Explain this CIFAR-100 class", [TOP, *(cifar_names or [])], key="cam_class")
    imagenet_names = next((m[3] for m in models if m[2].num_classes == 1000), None)
    explain_imagenet = st.selectbox("Explain this ImageNet class", [TOP, *(imagenet_names or [])],
                                    key="cam_class_imagenet") if imagenet_names else TOP

images: list[tuple[str, object]] = []
with source:
    uploads = st.file_uploader("Images (PNG, JPEG, WebP, GIF, BMP, TIFF; any size)",
                               type=["png", "jpg", "jpeg", "webp", "gif", "bmp", "tif", "tiff"],
                               accept_multiple_files=True, key="cam_upload")
    for upload in uploads or []:
        images.append((upload.name, upload.getvalue()))  # bytes in memory: nothing is written to disk
    if dataset_present():

        def pick_random() -> None:
            n = len(cifar_test().test)
            st.session_state.cam_cifar = ", ".join(str(i) for i in np.random.default_rng().choice(n, min(4, n),
                                                                                                   replace=False))

        st.button("Pick 4 random CIFAR-100 test images", on_click=pick_random, key="cam_random")
        pick = st.text_input("CIFAR-100 test images (indices, comma separated)", key="cam_cifar",
                             placeholder="e.g. 0, 7, 42")
        if pick.strip():
            try:
                data = cifar_test()
                for part in pick.split(","):
                    index = int(part)
                    array = data.test.images[index].permute(1, 2, 0).numpy()
                    truth = data.fine_names[int(data.test.labels[index])]
                    images.append((f"test #{index} ({truth})", Image.fromarray(np.ascontiguousarray(array))))
            except (ValueError, IndexError, DataError) as exc:
                st.error(f"Could not take those test images: {exc}")
    else:
        st.caption("CIFAR-100 test images appear here once the dataset is in the data folder.")

if not models:
    st.info("Choose at least one trained run (train one on the Train page) or ImageNet weights.")
    st.page_link("views/train.py", label="Go to the Train page", icon=":material/model_training:")
    st.stop()
if not images:
    st.info("Upload an image or pick CIFAR-100 test images to see the maps.")
    st.stop()

bar, legend = st.columns([2, 3], vertical_alignment="center")
bar.image(colour_bar(), width="stretch")
legend.caption("Colour scale of every map: dark purple = no evidence for the explained class, yellow = strongest "
               "evidence. The left image of each row is the original.")

for name, raw in images:
    st.markdown(f"#### {name}")
    try:
        picture = load_image(raw, name)  # a 12-MP photo is shrunk while it is decoded
    except ValueError as exc:
        st.error(str(exc))
        continue
    small = max(picture.size) < SHOWN_MIN_SIDE  # pixel art: PNG keeps its edges, JPEG would smear them
    fmt = "PNG" if small else "JPEG"
    cols = st.columns(len(models) + 1)
    cols[0].image(for_display(picture), caption=f"original ({picture.width}×{picture.height} px)", width="stretch",
                  output_format=fmt)
    for col, (label, model, spec, names) in zip(cols[1:], models, strict=True):
        wanted = explain_imagenet if spec.num_classes == 1000 else explain_cifar
        target = names.index(wanted) if wanted != TOP and wanted in names else None
        try:
            result = explain(model, spec, picture, method=method, target_class=target)
        except ValueError as exc:
            col.error(f"{label}: {exc}")
            continue
        col.image(for_display(overlay(picture, result.heatmap, alpha)), width="stretch", output_format=fmt,
                  caption=f"{label}: where it sees '{names[result.target_class]}'")
        col.markdown("\n".join(f"{k + 1}. {names[c]} {100 * p:.1f}%" for k, (c, p) in enumerate(result.top5)))
