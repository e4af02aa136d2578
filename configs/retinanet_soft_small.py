# RetinaNet + FPN with a SOFT-Small-Norm backbone on COCO 2017, 1x schedule.
# Same recipe mmdet uses for its pyramid transformers (configs/pvt: AdamW lr 1e-4, wd 1e-4,
# 12 epochs, 8 GPUs x 2 images); published result: 42.8 box AP, 34M parameters.
# The documented entry point; the model zoo's name for it is configs/soft/retinanet_soft-s-norm_fpn_1x_coco.py.
_base_ = './soft/retinanet_soft-s-norm_fpn_1x_coco.py'
