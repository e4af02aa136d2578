# Mask R-CNN + FPN with SOFT-Small-Norm on COCO 2017, 1x. Published: 43.8 box AP, 40.1 mask AP, 44M parameters.
_base_ = './mask-rcnn_soft-t-norm_fpn_1x_coco.py'
model = dict(backbone=dict(arch='small'))
