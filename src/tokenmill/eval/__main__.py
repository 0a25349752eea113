"""lm-eval's command line with the `tokenmill` model type registered: lm-eval 0.4 finds model
types only in its own table or among classes already imported, and has no plugin entry points.

    python -m tokenmill.eval --model tokenmill --model_args pretrained=MODEL_DIR --tasks TASK
"""

from lm_eval.__main__ import cli_evaluate

import tokenmill.eval.lm  # noqa: F401 - registers the model type

if __name__ == "__main__":
    cli_evaluate()
