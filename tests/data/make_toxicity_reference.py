"""Write ``toxicity_reference.json``: the scores of the original Keras classifier.

The scores come from ``toxic_classifier.ToxicCommentClassifier.classify`` of the
PyPI package ``toxic-comment-classifier==0.3.0`` (MIT), run by TensorFlow. They
are the reference that ``tests/test_toxicity.py`` compares hp_mini's PyTorch
port with. TensorFlow is needed only here, in a separate virtual environment::

    python -m venv /tmp/tfvenv
    /tmp/tfvenv/bin/pip install tensorflow-cpu toxic-comment-classifier==0.3.0
    /tmp/tfvenv/bin/python tests/data/make_toxicity_reference.py
"""

from __future__ import annotations

import json
import os
import platform
from importlib import metadata
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

LONG = " ".join(["the weather is nice and the people are friendly"] * 14) + " you stupid idiot"
LONG_FIRST = "you stupid idiot " + " ".join(["the weather is nice and the people are friendly"] * 14)

TEXTS = [
    # clean
    "Thank you for your help with the article, it looks great now.",
    "The meeting has been moved to Thursday afternoon.",
    "I love spending time with my family at the beach.",
    "This is wonderful news.",
    "Have a nice day :)",
    "Absolutely love your energy!",
    "Paris is the capital of France.",
    "Could you please add a citation for this claim?",
    "The recipe needs two cups of flour and one egg.",
    "Please stop reverting my edits without an explanation on the talk page.",
    "I disagree with your reading of the source, but I see your point.",
    "The cat sat on the mat.",
    # toxic, of several kinds
    "You are so dumb and stupid!",
    "I hate you so much!",
    "You're disgusting!",
    "You're the worst person ever!",
    "Shut up, you idiot.",
    "What a pathetic loser you are.",
    "You are an ignorant moron and everyone knows it.",
    "Go to hell, you piece of shit.",
    "This is fucking bullshit.",
    "I will kill you and your whole family.",
    "I am going to find where you live and hurt you.",
    "Fuck off and die.",
    "You stupid bitch.",
    "What an asshole.",
    "Damn, that was a crappy movie.",
    "All of those people are vermin and should be wiped out.",
    "Go back to your country, nobody wants your kind here.",
    "He is a worthless, useless, brainless jerk.",
    # borderline
    "That argument is idiotic, frankly.",
    "The killer whale is a fascinating animal.",
    "Kill the process and restart the server.",
    "I'm so mad I could scream.",
    # preprocessing: case, punctuation, URLs, whitespace, digits, apostrophes
    "YOU ARE AN IDIOT!!!",
    "you,are,an,idiot",
    "Visit http://example.com/idiot for more, you idiot.",
    "idiot\tidiot\nidiot",
    "don't you dare, you're a fool",
    "1234 5678 !!!",
    "   ",
    "",
    "xqzv blorptang frumious",
    "Tu es un idiot, va te faire foutre.",
    "Das ist eine schöne Stadt.",
    "naïve café résumé — “quoted” ‘text’",
    "stupid😡idiot",
    "The word 'stupid' appears in this sentence about language.",
    # sequence length: truncation keeps the last 100 tokens, padding is at the front
    LONG,
    LONG_FIRST,
]


def main() -> None:
    from toxic_classifier.model import LIST_CLASSES, ToxicCommentClassifier

    model = ToxicCommentClassifier()
    scores = [model.classify(t) for t in TEXTS]
    import tensorflow as tf

    out = {
        "command": "/tmp/tfvenv/bin/python tests/data/make_toxicity_reference.py",
        "packages": {
            "toxic-comment-classifier": metadata.version("toxic-comment-classifier"),
            "tensorflow": tf.__version__,
            "keras": metadata.version("keras"),
            "python": platform.python_version(),
        },
        "labels": list(LIST_CLASSES),
        "texts": TEXTS,
        "tokens": [list(map(int, s)) for s in model.tokenizer.texts_to_sequences(TEXTS)],
        "scores": [[s[label] for label in LIST_CLASSES] for s in scores],
    }
    path = Path(__file__).with_name("toxicity_reference.json")
    path.write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {path} ({len(TEXTS)} texts)")


if __name__ == "__main__":
    main()
