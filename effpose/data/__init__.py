"""Training data. ``effpose.data.coco`` reads COCO-format person keypoints without torch (evaluation uses it too);
``effpose.data.dataset`` builds top-down training samples and needs torch (the ``train`` extra).
"""

from effpose.data.coco import PersonRecord, is_scored_person, load_person_records, read_coco_json, xywh_to_xyxy

__all__ = ["PersonRecord", "is_scored_person", "load_person_records", "read_coco_json", "xywh_to_xyxy"]
