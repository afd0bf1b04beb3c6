"""The module's help and acknowledgement texts (Slicer shows them at the top of the panel).

Kept beside the module file so that the file stays the Slicer wiring; the README's Slicer section says
the same in more words.
"""

HELP_TEXT = """
<p>Segments a CT or MR volume with a U-Net family network (U-Net, UNet++) in one click.</p>
<ol>
<li><b>Input volume</b>: choose the CT or MR volume to segment.</li>
<li><b>Model</b>: the bundled chest CT model is selected by default; choose another
<code>.safetensors</code> model with the file button. The panel shows which structures the model
segments and for which kind of image it was made.</li>
<li><b>Speed / accuracy</b> (UNet++ models): the recommended depth is preselected; shallower depths
are faster, and the measured Dice and time per slice are shown for each.</li>
<li>Press <b>Segment this volume</b>. The first time, the extension offers to install PyTorch and a
few Python packages (once, several minutes). The progress bar shows the slices done and the time
left; press <b>Cancel</b> to stop, nothing is added to the scene then.</li>
<li>The result appears as a new segmentation with named, coloured segments, aligned with the input.
<b>Review these slices first</b> lists the slices where the model was least sure: choose one to go
there, and correct the result in <b>Segment Editor</b> before any clinical use.</li>
<li><b>Improve the model</b>: press <b>Fine-tune</b> to train a copy of the model on the volume and its
corrected segmentation (in the background; <b>Cancel</b> writes nothing). The new model is saved in
your models folder and selected for the next run when its Dice on held-out slices is not lower than its
base's (the panel says which model is selected and why).</li>
</ol>
<p><b>Advanced</b>: batch size (lower it after an out-of-memory error), slice axis, keeping only the
largest connected piece of each segment, a confidence map, the spacing the network runs at, and the
body crop.</p>
<p>This is a research tool, not a medical device.</p>
"""

ACKNOWLEDGEMENT_TEXT = """
UNet Segmentation uses PyTorch (through the PyTorch extension of Andras Lasso), MONAI, safetensors and
slicerio. U-Net: Ronneberger et al., MICCAI 2015. UNet++: Zhou et al., DLMIA 2018 and IEEE TMI 2020.
The background-process design follows the TotalSegmentator, MONAIAuto3DSeg and NNUNet extensions.
"""
