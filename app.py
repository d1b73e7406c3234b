"""The web page: drop photos, read their katakana captions.

    $ streamlit run app.py                          # the run python train.py made (runs/demo)
    $ streamlit run app.py -- --model runs/stair    # another run folder
    $ streamlit run app.py -- --model runs/a --ensemble runs/b   # two runs decoded as one
    $ streamlit run app.py -- --model runs/a --samples 16 --judge runs/b   # 16 draws too, run b choosing

Settings (127.0.0.1 only, headless, no usage statistics, 20 MB uploads) are
in .streamlit/config.toml. The page captions with the same ``Captioner`` as
predict.py, loaded once per server process; each photo shows its caption (in
hiragana too, easier to read), the n-best list with probabilities, how long
captioning took and, for attention models, where the model looked for each
character.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up chatter, before Keras is imported

import argparse  # noqa: E402
import io  # noqa: E402
import threading  # noqa: E402
from pathlib import Path  # noqa: E402

import jaconv  # noqa: E402
import streamlit as st  # noqa: E402

from captioner import DEFAULT_RUN, Captioner  # noqa: E402
from cli import add_drawing_options, bounded_append, check_drawing_options, nonempty_path  # noqa: E402
from decoding import ENSEMBLE_HELP, MAX_ENSEMBLE, SAMPLES_HELP  # noqa: E402
from demo import DEMO_DIR  # noqa: E402
from features import ImageError, WeightsUnavailable  # noqa: E402
from plots import attention_figure, figure_png  # noqa: E402

MAX_UPLOAD_MB = 20  # per photo; also server.maxUploadSize in .streamlit/config.toml
PHOTO_TYPES = ["jpg", "jpeg", "png", "webp"]
MAX_BEAM_ON_PAGE = 10
MAX_DEMO_CHOICES = 200  # the demo's held-out photos offered on the page


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="streamlit run app.py --",
                                     description="The captioner's web page; options go after streamlit's '--'.")
    parser.add_argument("--model", type=nonempty_path, default=DEFAULT_RUN, help="run folder written by train.py")
    parser.add_argument("--ensemble", action=bounded_append(MAX_ENSEMBLE - 1, "runs beside --model"), default=[],
                        metavar="RUN", type=nonempty_path, help=ENSEMBLE_HELP)
    add_drawing_options(parser, SAMPLES_HELP)
    args = parser.parse_args(argv)
    check_drawing_options(parser, args)
    return args


@st.cache_resource(show_spinner="Loading the model…")
def load_captioner(model_dir: str, ensemble: tuple[str, ...] = (), samples: int = 0, seed: int = 0,
                   judges: tuple[str, ...] = ()) -> tuple[Captioner, threading.Lock]:
    """The run's captioner, once per server process, with a lock: sessions are threads and take turns on the model."""
    return Captioner(model_dir, ensemble=ensemble, samples=samples, seed=seed, judges=judges), threading.Lock()


def demo_photos() -> list[Path]:
    folder = DEMO_DIR / "val2014"
    return sorted(folder.glob("*.jpg"))[:MAX_DEMO_CHOICES] if folder.is_dir() else []


def show_photo(captioner: Captioner, lock: threading.Lock, name: str, source, beam_size: int) -> None:
    """One photo's section of the page; a photo that cannot be read gets an error there, and the page goes on."""
    st.subheader(name)
    try:
        with lock:
            result = captioner.caption_photo(source, n_best=beam_size, name=name)
    except ImageError as error:
        st.error(f"error: {error}")
        return
    picture, words = st.columns([1, 2])
    picture.image(result.image, caption=f"what the model sees ({captioner.config.image_size} px)")
    best = result.captions[0]
    words.markdown(f"### {best.text or '(empty)'}")
    words.caption(f"ひらがな: {jaconv.kata2hira(best.text)}")
    words.caption(f"{1000 * result.seconds:.0f} ms (reading, VGG16, decoding)")
    if len(result.captions) > 1:
        words.table({"caption": [c.text for c in result.captions],
                     "probability": [f"{c.probability:.2g}" for c in result.captions]})
        ranking = {"ctc": "CTC beam search's probability",
                   "ctc-lm": "CTC's probability and the language model's of the training captions"}.get(
            captioner.decode, "log-probability per character")
        if captioner.samples:  # beam search's captions and the drawn ones, whole captions compared, ended first
            whose = "the judges'" if captioner.judges else "the run's"
            ranking = f"{whose} probability of the whole caption, ended first"
        words.caption(f"ranked by {ranking}, as predict.py --n-best ranks them")
    else:
        words.caption(f"probability {best.probability:.2g}")
    if result.attention is not None and best.text:
        with st.expander("where the model looked for each character"):
            st.image(figure_png(attention_figure(result.image, best.text, result.attention, name)))


def main(argv=None) -> None:
    st.set_page_config(page_title="kana-captioner", layout="wide")
    st.title("カタカナ captioner")
    try:
        args = parse_args(sys.argv[1:] if argv is None else argv)
    except SystemExit:  # argparse has printed why on the server's terminal
        st.error("error: the page's options are: streamlit run app.py -- [--model RUN_FOLDER] [--ensemble RUN_FOLDER]… "
                 "[--samples N [--judge RUN_FOLDER]… [--seed S]]")
        st.stop()
    model = Path(args.model)
    if not model.is_dir():
        hint = " Train one with: python train.py" if args.model == DEFAULT_RUN else ""
        st.error(f"error: no run folder at {model}.{hint}")
        st.stop()
    try:
        captioner, lock = load_captioner(str(model), tuple(args.ensemble), args.samples, args.seed or 0,
                                         tuple(args.judge))
    except (OSError, ValueError, WeightsUnavailable) as error:  # what predict.py prints for a run that does not load
        st.error(f"error: {error}")
        st.stop()
    config = captioner.config
    runs = f"{model} and {', '.join(args.ensemble)} as one" if args.ensemble else f"{model}"
    drawn = f", {args.samples} captions drawn per photo" if args.samples else ""
    judged = f", chosen by {', '.join(args.judge)}" if args.judge else ""
    st.caption(f"{runs}: {config.arch}, {config.units} units, VGG16 weights {config.vgg_weights}, "
               f"{config.image_size} px, decoding {captioner.decode}{drawn}{judged}")

    uploads = st.file_uploader("Photos (JPEG, PNG or WebP)", type=PHOTO_TYPES, accept_multiple_files=True,
                               max_upload_size=MAX_UPLOAD_MB)
    choices = demo_photos()
    picked = st.multiselect("…or held-out demo photos", [path.name for path in choices])
    beam_size = st.slider("Beam size (and captions listed)", 1, MAX_BEAM_ON_PAGE, 1,
                          help="1 is greedy decoding, predict.py's default; a larger beam also lists the runners-up "
                               "with their probabilities (image2text runs trained with crossentropy write one caption)")
    for upload in uploads or []:
        if upload.size > MAX_UPLOAD_MB * 2**20:  # the server refuses these already; a second check costs nothing
            st.subheader(upload.name)
            st.error(f"error: {upload.name}: {upload.size / 2**20:.0f} MB; photos up to {MAX_UPLOAD_MB} MB are captioned")
            continue
        show_photo(captioner, lock, upload.name, io.BytesIO(upload.getvalue()), beam_size)
    by_name = {path.name: path for path in choices}
    for name in picked:
        show_photo(captioner, lock, name, by_name[name], beam_size)
    if not uploads and not picked:
        st.info("Drop photos above, or pick held-out demo photos, to caption them.")


if __name__ == "__main__":
    main()
