"""Class activation maps page: what each variant looks at, side by side."""

import numpy as np
import streamlit as st

from effnet.analysis.cam import (
    LAYER_RULES,
    MAX_CAM_IMAGES,
    METHOD_NAMES,
    METHOD_NOTES,
    METHODS,
    ROAD_NOTE,
    cam_budget,
    colour_bar,
    default_device,
    imagenet_model,
    randomised,
)
from effnet.arch.scaling import VARIANTS, ScalingSpec
from effnet.data.cifar import DataError
from effnet.data.images import UPLOAD_TYPES
from effnet.training import runs
from views.widgets import (
    cam_strip,
    dataset_test_images,
    load_run_models,
    plain,
    run_dataset,
    test_images_source,
)

DEVICE = default_device()
TOP = "(top prediction)"


@st.cache_resource(max_entries=2, show_spinner="Loading ImageNet weights...")
def cached_imagenet_model(variant: str):
    return imagenet_model(variant, DEVICE)


st.title("Class activation maps")
st.caption("Where does each model look? The map is computed on a feature map of the model (by default the last "
           "one of at least 4x4) and drawn over the whole image (viridis: bright = strong evidence).")
LAYERS = {"last": "last map of at least 4x4 (default)", "finer": "finer: last map of at least 8x8",
          "finest": "finest: last map of at least 16x16"}


@st.cache_resource(max_entries=4, show_spinner=False)
def cached_randomised(key: str, _model):
    """The randomised copy of a loaded model (``key`` names which), shared by every session like the model."""
    return randomised(_model)

usable = [i for i in runs.list_runs() if not i.damaged and runs.shown_checkpoint(i.path) is not None]
by_id = {i.run_id: i for i in usable}

controls, source = st.columns([1, 1], gap="large")
with controls:
    # Pills, not a multiselect: its chips cut long run labels off; a pill shows the whole label.
    chosen_runs = st.pills("Trained runs to compare", list(by_id), selection_mode="multi", default=list(by_id)[:4],
                           format_func=lambda rid: plain(by_id[rid].label), key="cam_runs") or []
    chosen_imagenet = st.multiselect("torchvision ImageNet weights (for photos; downloaded once)",
                                     [v.upper() for v in VARIANTS], key="cam_imagenet")
    method = st.selectbox("Method", list(METHODS), key="cam_method",
                          format_func=lambda m: METHOD_NAMES[m] + (" (slow)" if m == "scorecam" else ""))
    st.caption(METHOD_NOTES[method])
    layer = st.radio("Layer", list(LAYER_RULES), format_func=LAYERS.get, key="cam_layer", horizontal=True,
                     help="An earlier stage has a finer map (more cells) but sees less of the image at once.")
    road = st.toggle("Faithfulness score (ROAD)", value=True, key="cam_road", help=ROAD_NOTE)
    sanity = st.toggle("Sanity check: randomised weights", key="cam_sanity",
                       help="Adebayo et al. (2018): a map that stays the same when the weights are random shows the "
                            "image's edges, not what the model learned. A faithful method's map should change, and "
                            "its ROAD score fall to about 0.")
    alpha = st.slider("Map opacity", 0.0, 1.0, 0.5, 0.05, key="cam_alpha",
                      help="0: the image alone; 1: the map alone. Lower it to see the object under the map.")
    if method == "scorecam":
        b0_head = ScalingSpec.official("b0").head_channels
        st.warning(f"Score-CAM runs one forward pass per channel of the target layer ({b0_head:,} for B0): seconds "
                   "per model on a CPU, longer for wide models.")

fit_models, _ = cam_budget(len(chosen_runs) + len(chosen_imagenet), 1, method, sanity)
if len(chosen_runs) + len(chosen_imagenet) > fit_models:  # one rerun's work stays bounded on a shared server
    controls.warning(f"{len(chosen_runs) + len(chosen_imagenet)} models chosen: the first {fit_models} are explained "
                     f"with {METHOD_NAMES[method]}{' and the sanity check' if sanity else ''} (a server the class "
                     "shares).")
    chosen_runs = chosen_runs[:fit_models]
    chosen_imagenet = chosen_imagenet[:fit_models - len(chosen_runs)]
models = [(info.label, model, spec, names)
          for info, model, spec, names in load_run_models([by_id[rid] for rid in chosen_runs], controls)]
for variant in chosen_imagenet:
    try:
        model, spec, names = cached_imagenet_model(variant.lower())
        models.append((f"{variant} (ImageNet)", model, spec, names))
    except (RuntimeError, ValueError) as exc:
        controls.error(f"{variant} ImageNet weights are unavailable here. {exc}")

follows: dict[int, int] = {}  # each randomised copy explains the class its trained model explained
if sanity:
    follows = {len(models) + i: i for i in range(len(models))}
    models += [(f"{label} · randomised weights", cached_randomised(f"{label}|{id(model)}", model), spec, names)
               for label, model, spec, names in list(models)]

with controls:
    # The classes of the first trained run (CIFAR-100's, or the names of your own class folders).
    cifar_names = next((m[3] for m in models if m[2].num_classes != 1000), None)
    explain_cifar = st.selectbox("Explain this class (runs trained here)", [TOP, *(cifar_names or [])],
                                 key="cam_class")
    imagenet_names = next((m[3] for m in models if m[2].num_classes == 1000), None)
    explain_imagenet = st.selectbox("Explain this ImageNet class", [TOP, *(imagenet_names or [])],
                                    key="cam_class_imagenet") if imagenet_names else TOP

images: list[tuple[str, object]] = []
with source:
    uploads = st.file_uploader("Images (PNG, JPEG, WebP, GIF, BMP, TIFF; any size)", type=list(UPLOAD_TYPES),
                               accept_multiple_files=True, key="cam_upload")
    for upload in uploads or []:
        images.append((upload.name, upload.getvalue()))  # bytes in memory: nothing is written to disk
    # Test images of the first chosen run's dataset: CIFAR-100, or your own class folders.
    config = next((by_id[r].config for r in chosen_runs if by_id[r].config is not None), None)
    where = test_images_source(config)
    if where is not None:

        def pick_random() -> None:
            n = len(run_dataset(config).test)
            st.session_state.cam_cifar = ", ".join(str(i) for i in np.random.default_rng().choice(n, min(4, n),
                                                                                                   replace=False))

        st.button(f"Pick 4 random test images ({where})", on_click=pick_random, key="cam_random")
        pick = st.text_input(f"Test images of {where} (indices, comma separated)", key="cam_cifar",
                             placeholder="e.g. 0, 7, 42", max_chars=60)
        try:
            images += dataset_test_images(pick, config)
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
_, fit_images = cam_budget(len(models), len(images), method, sanity)
if len(images) > fit_images:  # one rerun's work stays bounded on a shared server
    st.warning(f"{len(images)} images chosen: the first {fit_images} are explained (each is one map per model, and "
               f"one rerun explains at most {MAX_CAM_IMAGES} images and a few dozen maps on a server the class shares).")
    images = images[:fit_images]

bar, legend = st.columns([2, 3], vertical_alignment="center")
bar.image(colour_bar(), width="stretch")
if road:
    st.caption(ROAD_NOTE)
legend.caption("Colour scale of every map: dark purple = no evidence for the explained class, yellow = strongest "
               "evidence. The left image of each row is the original.")



def target_for(spec: ScalingSpec, names: list[str]) -> int | None:
    wanted = explain_imagenet if spec.num_classes == 1000 else explain_cifar
    return names.index(wanted) if wanted != TOP and wanted in names else None


for name, raw in images:
    cam_strip(name, raw, models, method, alpha, target_for, layer=layer, road=road, follows=follows)
