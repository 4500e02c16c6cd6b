"""Pascal Context 60 / 59 (registered earlier): metadata against mmseg's PascalContextDataset /
PascalContextDataset59, check_dataset and one evaluation pass on the miniature tree."""
import pytest

from detectron2.data import DatasetCatalog

import dataset_trees as trees


@pytest.mark.parametrize("name,mmseg_class,reduce", [
    ("pascal_context_sem_seg_val", "PascalContextDataset", False),
    ("pascal_context_59_sem_seg_val", "PascalContextDataset59", True),
])
def test_matches_mmseg_check_and_evaluation(tmp_path, name, mmseg_class, reduce):
    trees.make_pascal_context(tmp_path)
    with trees.registered_under(tmp_path, "pascal_context"):
        trees.check_metadata_equals_mmseg(name, mmseg_class, reduce)
        assert [d["file_name"].rsplit("/", 1)[1] for d in DatasetCatalog.get(name)] == [
            s + ".jpg" for s in trees.CONTEXT_VAL]
        code, report = trees.run_check_dataset(name)
        assert code == 0, report
        res = trees.evaluate_known_confusion(name)
        assert 0 < res["mIoU"] < 100
