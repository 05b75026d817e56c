"""The models: ``registry`` (cards and verified weights), ``forest`` (scikit-learn models),
``resnet3d`` (the 3D ResNet), ``predict`` (inputs, each model's age, the ensemble),
``linear`` (ridge models as plain arrays: data, not code)."""
