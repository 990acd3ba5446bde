"""TF-IDF + logistic regression on xfer's own splits of a text data set: the classical baseline a transferred model
should be read against (scikit-learn; word 1-2-grams, C chosen on the validation split).

    .venv/bin/python bench/tfidf_baseline.py --data builtin:rotten_tomatoes
    .venv/bin/python bench/tfidf_baseline.py --data builtin:reuters_r8
"""

from __future__ import annotations

import argparse
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="builtin:rotten_tomatoes")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--smoke", action="store_true", help="seconds-long run on tiny inputs (checks the script works)")
    args = ap.parse_args()
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    from xfer.config import FitConfig
    from xfer.data.task import few_shot
    from xfer.fitting.evaluate import classification_metrics
    from xfer.fitting.prepare import load_fit_task

    task = load_fit_task(FitConfig(data=args.data, seed=args.seed))
    if args.smoke:
        task = few_shot(task, 4, args.seed)
    start = time.perf_counter()
    vec = TfidfVectorizer(ngram_range=(1, 2), min_df=2 if not args.smoke else 1, sublinear_tf=True)
    x_train = vec.fit_transform(task.train.items)
    x_val, x_test = vec.transform(task.val.items), vec.transform(task.test.items)
    best = None
    for c in (0.3, 1.0, 3.0, 10.0, 30.0):
        clf = LogisticRegression(C=c, max_iter=2000).fit(x_train, task.train.labels)
        val = float((clf.predict(x_val) == task.val.labels).mean())
        if best is None or val > best[0]:
            best = (val, c, clf)
    val, c, clf = best
    m = classification_metrics(task.test.labels, clf.predict(x_test), task.labels)
    print(f"{args.data}: TF-IDF (1-2-grams) + logistic regression, C={c} (val {val:.4f}): test accuracy "
          f"{m['accuracy']:.4f}, macro-F1 {m['macro_f1']:.4f}, {time.perf_counter() - start:.1f}s")


if __name__ == "__main__":
    main()
