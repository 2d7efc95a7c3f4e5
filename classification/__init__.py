"""Image classification: pretraining a backbone of ``common.backbones`` as a classifier
(``tools/train_cls.py``), so that detection and segmentation can start from it.

    config.py       ClsConfig (arch, data, solver)
    source_data.py  the built-in generated source task (not ImageNet), ImageFolder layout
    data.py         ImageFolder datasets, albumentations ImageNet augmentation, loaders
    model.py        ImageClassifier (the engine's model contract) and top-k accuracy
    build.py        config -> objects
"""
