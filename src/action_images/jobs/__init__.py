"""The world action model's other jobs as commands: ``action-images label``, ``imagine`` and ``generate``.

    action-images label    --checkpoint RUN --data IN_DATASET --out OUT_DATASET        # video -> actions (labeler)
    action-images imagine  --checkpoint RUN --data DATASET --episode 0 --out OUT_DIR   # actions -> video (world_model)
    action-images generate --checkpoint RUN --data DATASET --episode 0 --chunks 4 --out OUT_DIR   # video only

One module per command (``label.py``, ``imagine.py``, ``generate.py``); ``common.py`` holds what they share: the
checkpoint and camera rules, the model's windows cut from a dataset episode and the chunk-by-chunk rollout.
"""
