# Mask R-CNN + FPN with SOFT-Large-Norm on COCO 2017, 1x. Published: 47.0 box AP, 42.2 mask AP, 84M parameters.
_base_ = './mask-rcnn_soft-t-norm_fpn_1x_coco.py'
model = dict(backbone=dict(arch='large'))
