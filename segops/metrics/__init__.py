"""Metrics as pure functions: the confusion matrix (`confusion`), IoU, Dice, precision, recall,
F1 and pixel accuracy from it (`semantic`), COCO mask AP and instance painting (`instance`).
Training validates with them and evaluation reports them; they import no other segops room."""
