"""Draws the UNet Segmentation icon: a stylised U (the network's encoder-decoder shape) over an
axial CT slice whose lungs are segmented in colour. 128x128 RGBA, drawn at 4x and downsampled."""
import sys
from PIL import Image, ImageDraw, ImageFilter

S = 512
img = Image.new("RGBA", (S, S), (0, 0, 0, 0))
d = ImageDraw.Draw(img)
# background: rounded square, dark blue
d.rounded_rectangle([8, 8, S - 8, S - 8], radius=90, fill=(22, 36, 64, 255))

# CT slice: body ellipse with soft gradient look
slice_layer = Image.new("RGBA", (S, S), (0, 0, 0, 0))
sd = ImageDraw.Draw(slice_layer)
sd.ellipse([44, 110, S - 44, S - 80], fill=(150, 150, 150, 255))          # body (soft tissue)
sd.ellipse([64, 130, S - 64, S - 100], fill=(122, 122, 122, 255))         # inner tissue
# lungs (dark) - will be overlaid by coloured segments
left_lung = [104, 168, 236, 392]
right_lung = [S - 236, 168, S - 104, 392]
sd.ellipse(left_lung, fill=(30, 30, 30, 255))
sd.ellipse(right_lung, fill=(30, 30, 30, 255))
# spine and sternum
sd.ellipse([S // 2 - 28, 372, S // 2 + 28, 428], fill=(240, 240, 240, 255))
sd.ellipse([S // 2 - 16, 150, S // 2 + 16, 182], fill=(225, 225, 225, 255))
slice_layer = slice_layer.filter(ImageFilter.GaussianBlur(2))
img.alpha_composite(slice_layer)

# segments: translucent colours on the lungs, with crisp outlines
seg = Image.new("RGBA", (S, S), (0, 0, 0, 0))
gd = ImageDraw.Draw(seg)
gd.ellipse(left_lung, fill=(40, 200, 120, 150), outline=(90, 240, 160, 255), width=8)
gd.ellipse(right_lung, fill=(250, 170, 40, 150), outline=(255, 205, 90, 255), width=8)
img.alpha_composite(seg)

# the U: encoder down, bottleneck, decoder up - a thick white stroke with a teal shadow
u = Image.new("RGBA", (S, S), (0, 0, 0, 0))
ud = ImageDraw.Draw(u)
def draw_u(draw, colour, width, dx=0, dy=0):
    x0, x1, top, bottom = 170 + dx, S - 170 + dx, 96 + dy, 372 + dy
    r = (x1 - x0) // 2
    draw.line([(x0, top), (x0, bottom - r)], fill=colour, width=width)
    draw.line([(x1, top), (x1, bottom - r)], fill=colour, width=width)
    draw.arc([x0, bottom - 2 * r, x1, bottom], start=0, end=180, fill=colour, width=width)
    # round caps
    for x in (x0, x1):
        draw.ellipse([x - width // 2, top - width // 2, x + width // 2, top + width // 2], fill=colour)
draw_u(ud, (0, 0, 0, 120), 48, dx=6, dy=8)
u = u.filter(ImageFilter.GaussianBlur(6))
ud = ImageDraw.Draw(u)
draw_u(ud, (64, 200, 230, 255), 48)
draw_u(ud, (255, 255, 255, 255), 24)
img.alpha_composite(u)

# skip connections: three short dashes across the U (the U-Net's hallmark)
sk = ImageDraw.Draw(img)
for y in (150, 215):
    for x in range(206, S - 206, 28):
        sk.line([(x, y), (x + 14, y)], fill=(255, 255, 255, 235), width=10)

out = img.resize((128, 128), Image.LANCZOS)
for path in sys.argv[1:]:
    out.save(path)
