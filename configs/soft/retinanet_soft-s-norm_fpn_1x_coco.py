# RetinaNet + FPN with SOFT-Small-Norm on COCO 2017, 1x. Published: 42.8 box AP, 34M parameters.
_base_ = './retinanet_soft-t-norm_fpn_1x_coco.py'
model = dict(backbone=dict(arch='small'))
