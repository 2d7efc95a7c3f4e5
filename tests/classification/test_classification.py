"""Classification pretraining pieces: the generated source task, the ImageFolder data, top-k
accuracy, and the classifier's state dict in torchvision's format loading into the detection and
segmentation backbones of every family (ResNet, VGG16, MobileNetV3)."""
import pytest
import torch
import torchvision

from classification.build import build_datasets, build_model, with_data_defaults
from classification.config import ClsConfig
from classification.data import ClassificationDataError, build_train_loader
from classification.model import topk_correct
from classification.source_data import CLASSES, generate_source_dataset
from common.config import load_config


@pytest.fixture(scope="module")
def source_dir(tmp_path_factory):
    return generate_source_dataset(tmp_path_factory.mktemp("src") / "d", num_train=2, num_val=1, size=40)


def test_source_task_is_an_image_folder_with_ten_classes_and_a_seeded_prefix(source_dir, tmp_path):
    cfg = load_config(ClsConfig, None, ["data.image_size=32"])
    train, val = build_datasets(cfg, source_dir)
    assert train.class_names == sorted(CLASSES) and len(train) == 20 and len(val) == 10
    image, label = val[0]
    assert image.shape == (3, 32, 32) and image.dtype == torch.uint8 and label == 0
    bigger = generate_source_dataset(tmp_path / "big", num_train=3, num_val=0, size=40)
    name = "stripes/stripes_000001.jpg"
    assert (bigger / "train" / name).read_bytes() == (source_dir / "train" / name).read_bytes()


def test_crop_scale_follows_the_data_unless_set():
    builtin, note = with_data_defaults(load_config(ClsConfig))
    assert builtin.data.crop_scale == (0.35, 1.0) and "built-in task" in note
    folder, note = with_data_defaults(load_config(ClsConfig, None, ["data.root=/imagenet"]))
    assert folder.data.crop_scale == (0.08, 1.0) and "ImageNet's" in note
    mine, note = with_data_defaults(load_config(ClsConfig, None, ["data.crop_scale=[0.5,1.0]"]))
    assert mine.data.crop_scale == (0.5, 1.0) and note == ""


def test_source_task_refuses_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match=r"generate_source_dataset: size must be an integer >= 16, got 8"):
        generate_source_dataset(tmp_path / "x", size=8)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "f").write_text("")
    with pytest.raises(ValueError, match=r"full exists and is not an empty directory"):
        generate_source_dataset(tmp_path / "full")


def test_mismatched_class_folders_are_named(source_dir, tmp_path):
    import shutil
    root = tmp_path / "odd"
    shutil.copytree(source_dir, root)
    shutil.rmtree(root / "val" / "zigzag")
    with pytest.raises(ClassificationDataError, match=r"different class folders \(only in train: \['zigzag'\]; "
                                                      r"only in val: none\)"):
        build_datasets(load_config(ClsConfig), root)
    with pytest.raises(ClassificationDataError, match=r"image folder .*nothing/train does not exist"):
        build_datasets(load_config(ClsConfig), tmp_path / "nothing")


def test_train_batches_are_seeded_and_resumable(source_dir):
    train, _ = build_datasets(load_config(ClsConfig, None, ["data.image_size=32"]), source_dir)
    first = [b for _, b in zip(range(3), build_train_loader(train, batch_size=4, seed=1))]
    resumed = next(build_train_loader(train, batch_size=4, seed=1, start_iter=2))
    images, labels = first[2]
    assert images.shape == (4, 3, 32, 32) and images.dtype == torch.float32 and float(images.max()) <= 1
    assert torch.equal(resumed[0], images) and torch.equal(resumed[1], labels)


def test_topk_correct_on_hand_made_scores():
    scores = torch.tensor([[0.1, 0.7, 0.2], [0.5, 0.2, 0.3], [0.2, 0.3, 0.5]])
    labels = torch.tensor([1, 2, 1])
    assert topk_correct(scores, labels, ks=(1, 2, 5)) == {1: 1, 2: 3, 5: 3}


ARCHS = ("resnet18", "vgg16", "mobilenet_v3_large")


@pytest.mark.parametrize("arch", ARCHS)
def test_classifier_state_dict_is_torchvisions_format(arch):
    with torch.device("meta"):  # shapes only: no memory, no init time
        ours = build_model(arch, 3).net.state_dict()
        theirs = getattr(torchvision.models, arch)(num_classes=3).state_dict()
    assert [(k, tuple(v.shape)) for k, v in ours.items()] == [(k, tuple(v.shape)) for k, v in theirs.items()]


def _saved_classifier(tmp_path, arch):
    torch.manual_seed(7)
    net = build_model(arch, 3).net
    for m in net.modules():  # non-trivial BN statistics, so their loading is checked too
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    path = tmp_path / f"{arch}.pth"
    torch.save(net.state_dict(), path)
    return torch.load(path, weights_only=True), path


# (name in our backbone, name in torchvision's model): the first conv and a BN statistic
FIRST = {"resnet18": [("body.stem.conv1.weight", "conv1.weight"),
                      ("body.c4.1.bn2.running_var", "layer3.1.bn2.running_var")],
         "vgg16": [("body.stem.0.weight", "features.0.weight"), ("body.c5.4.bias", "features.28.bias")],
         "mobilenet_v3_large": [("body.stem.0.0.weight", "features.0.0.weight"),
                                ("body.c4.0.block.0.1.running_var", "features.7.block.0.1.running_var")]}


@pytest.mark.parametrize("arch", ["resnet18", pytest.param("vgg16", marks=pytest.mark.slow),
                                  "mobilenet_v3_large"])  # VGG16: four 138M-parameter inits, ~30 s
def test_classifier_loads_as_detection_and_segmentation_backbone(tmp_path, arch, capsys):
    from detection.build import build_model as build_detector
    from detection.config import DetConfig
    from segmentation.build import build_model as build_segmenter
    from segmentation.config import SegConfig

    state, path = _saved_classifier(tmp_path, arch)
    if arch == "vgg16":  # Faster R-CNN VGG16: fc6/fc7 of the file become the box head
        det_cfg = load_config(DetConfig, "configs/detection/faster_rcnn_VGG16.yaml",
                              [f"model.backbone.weights={path}"])
    else:
        det_cfg = load_config(DetConfig, "configs/detection/shapes_R18_FPN.yaml",
                              [f"model.backbone.name={arch}", f"model.backbone.weights={path}",
                               "model.backbone.norm=FrozenBN", "model.mask_on=false", "model.keypoint_on=false"])
    seg_cfg = load_config(SegConfig, None, ["model.arch=fcn", f"model.backbone.name={arch}",
                                            f"model.backbone.weights={path}", "model.backbone.norm=FrozenBN"])
    torch.manual_seed(99)  # any init: equality can only come from the file
    detector = build_detector(det_cfg.model, 4)
    segmenter = build_segmenter(seg_cfg.model, 5)
    assert "left out its 3-class classification head" in capsys.readouterr().out
    for model, prefix in ((detector, "backbone."), (segmenter, "net.backbone.")):
        tensors = dict(model.state_dict())
        for ours, theirs in FIRST[arch]:
            assert torch.equal(tensors[prefix + ours], state[theirs]), (prefix + ours, theirs)
    if arch == "vgg16":
        box_head = dict(detector.named_parameters())
        fc6 = [k for k in box_head if k.endswith("fc6.weight")]
        assert len(fc6) == 1 and torch.equal(box_head[fc6[0]], state["classifier.0.weight"])
