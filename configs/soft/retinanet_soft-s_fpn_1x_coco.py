# RetinaNet + FPN with plain SOFT-Small (no symmetric normalization), to compare with SOFT-Small-Norm on the same
# recipe. Not in the published zoo: the IJCV paper reports dense-prediction results for the -Norm variants only.
_base_ = './retinanet_soft-s-norm_fpn_1x_coco.py'
model = dict(backbone=dict(sym_norm=False))
