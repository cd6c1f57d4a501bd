"""A synthetic VQAv2 directory in the Hub's parquet layout, with drawn images, for runs without the data.

    python -m diffpali.data.synthetic_vqav2 DIR --image-size 224 --records 64

writes ``DIR/data/{train,validation}-00000-of-00001.parquet`` with the columns and types of
``HuggingFaceM4/VQAv2`` (question_type, multiple_choice_answer, answers as ten
``{answer, answer_confidence, answer_id}``, image_id, answer_type, question_id, question, image),
so ``data=vqav2 data.path=DIR`` reads it through the same ``load_dataset("parquet", ...)`` call as a
downloaded copy. Each image is a drawn scene (diffpali.scenes) at the model's image size, asked about
by colour, shape, presence or count; every image has several questions, as in VQAv2.
"""

from __future__ import annotations

import argparse
import io
import random
from pathlib import Path
from typing import Any

from datasets import Dataset, Features, Image, Value

from ..scenes.draw import COLORS, SHAPES
from ..scenes.scene import Scene, draw_scene, sample_objects

#: The Hub dataset's features (``HuggingFaceM4/VQAv2``), in its column order.
FEATURES = Features({
    "question_type": Value("string"),
    "multiple_choice_answer": Value("string"),
    "answers": [{"answer": Value("string"), "answer_confidence": Value("string"), "answer_id": Value("int64")}],
    "image_id": Value("int64"),
    "answer_type": Value("string"),
    "question_id": Value("int64"),
    "question": Value("string"),
    "image": Image(),
})
SPLITS = ("train", "validation")
QUESTIONS_PER_IMAGE = 3
NUMBERS = ("zero", "one", "two", "three", "four")


def split_file(directory: Path, split: str) -> Path:
    """The Hub's name of a split's one shard: ``data/{split}-00000-of-00001.parquet``."""
    return Path(directory) / "data" / f"{split}-00000-of-00001.parquet"


def questions(scene: Scene, rng: random.Random) -> list[tuple[str, str, str, str]]:
    """(question_type, question, answer, answer_type) about ``scene``, ``QUESTIONS_PER_IMAGE`` of them."""
    first = scene.objects[0]
    color, shape = rng.choice(sorted(COLORS)), rng.choice(SHAPES)
    pool = [
        ("what color is the", f"What color is the {first.shape}?", first.color, "other"),
        ("what shape is", f"What shape is the {first.color} object?", first.shape, "other"),
        ("is there a", f"Is there a {color} {shape}?", "yes" if scene.find(shape, color) else "no", "yes/no"),
        ("how many", "How many shapes are there?", str(len(scene.objects)), "number"),
    ]
    return rng.sample(pool, QUESTIONS_PER_IMAGE)


def _png(scene: Scene) -> bytes:
    buffer = io.BytesIO()
    scene.image.save(buffer, format="PNG")
    return buffer.getvalue()


def records(count: int, image_size: int, seed: int, first_id: int) -> dict[str, list[Any]]:
    """``count`` question records (columns of :data:`FEATURES`) over drawn images of ``image_size`` px."""
    rng = random.Random(seed)
    columns: dict[str, list[Any]] = {name: [] for name in FEATURES}
    image_id = first_id
    while len(columns["question"]) < count:
        grid = rng.choice((1, 2))
        scene = draw_scene(rng, grid, sample_objects(rng, grid, rng.randint(1, grid * grid)), size=image_size)
        image = {"bytes": _png(scene), "path": None}
        for number, (kind, question, answer, answer_type) in enumerate(questions(scene, rng)):
            columns["question_type"].append(kind)
            columns["multiple_choice_answer"].append(answer)
            columns["answers"].append([{"answer": answer, "answer_confidence": "yes", "answer_id": k}
                                       for k in range(1, 11)])
            columns["image_id"].append(image_id)
            columns["answer_type"].append(answer_type)
            columns["question_id"].append(image_id * 1000 + number)
            columns["question"].append(question)
            columns["image"].append(image)
        image_id += 1
    return {name: values[:count] for name, values in columns.items()}


def write_synthetic_vqav2(directory: str | Path, image_size: int = 224, records_per_split: int = 64,
                          seed: int = 0) -> Path:
    """Write the train and validation shards into ``directory``; returns it. Same arguments, same bytes."""
    directory = Path(directory)
    for index, split in enumerate(SPLITS):
        path = split_file(directory, split)
        path.parent.mkdir(parents=True, exist_ok=True)
        columns = records(records_per_split, image_size, seed + index, first_id=(index + 1) * 100_000)
        Dataset.from_dict(columns, features=FEATURES).to_parquet(str(path))
    return directory


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("directory")
    parser.add_argument("--image-size", type=int, default=224, help="side of the drawn images (the model's)")
    parser.add_argument("--records", type=int, default=64, help="questions per split")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    out = write_synthetic_vqav2(args.directory, args.image_size, args.records, args.seed)
    print(f"{out}: {', '.join(str(split_file(out, s).relative_to(out)) for s in SPLITS)}")


if __name__ == "__main__":
    main()
