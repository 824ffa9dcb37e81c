package refgen

import (
	"fmt"
	"image"
	"image/color"
	"math"

	"github.com/genfleet/genfleet/backends"
)

// Image to image and inpainting.
//
// With an init image, Render blends the generated picture over it, pixel
// by pixel: with a = strength · m, where m is the mask's luminance at the
// pixel in [0, 1] (1 without a mask: white is changed, black kept),
//
//	out = round((1 − a) · init + a · generated)
//
// per 8-bit RGB channel of the init image's non-premultiplied colour
// (alpha 255). Strength 0 gives the init image back, strength 1 without a
// mask the text-to-image picture of the same seed. The same inputs give
// the same bytes.

// checkInputs refuses an init image or mask that is not the job's size, a
// mask without an init image, or a strength outside 0..1, wrapping
// backends.ErrBadParams.
func checkInputs(p backends.Params) error {
	bad := backends.ErrBadParams
	if p.InitImage == nil {
		if p.Mask != nil {
			return fmt.Errorf("refgen: mask without init_image: %w", bad)
		}
		return nil
	}
	for _, in := range []struct {
		field string
		img   *backends.Image
	}{{"init_image", p.InitImage}, {"mask", p.Mask}} {
		if in.img == nil {
			continue
		}
		if in.img.Image == nil {
			return fmt.Errorf("refgen: %s is not decoded: %w", in.field, bad)
		}
		if b := in.img.Image.Bounds(); b.Dx() != p.Width || b.Dy() != p.Height {
			return fmt.Errorf("refgen: %s is %dx%d, the job is %dx%d: %w", in.field, b.Dx(), b.Dy(), p.Width, p.Height, bad)
		}
	}
	if math.IsNaN(p.Strength) || p.Strength < 0 || p.Strength > 1 {
		return fmt.Errorf("refgen: strength %v is outside 0..1: %w", p.Strength, bad)
	}
	return nil
}

// blend blends img (the generated picture) over p's init image, as the
// file comment says, in place.
func blend(img *image.NRGBA, p backends.Params) {
	init := p.InitImage.Image
	ib := init.Bounds()
	var mask image.Image
	var mb image.Rectangle
	if p.Mask != nil {
		mask, mb = p.Mask.Image, p.Mask.Image.Bounds()
	}
	for y := range p.Height {
		row := img.Pix[y*img.Stride : y*img.Stride+4*p.Width]
		for x := range p.Width {
			a := p.Strength
			if mask != nil {
				g := color.GrayModel.Convert(mask.At(mb.Min.X+x, mb.Min.Y+y)).(color.Gray)
				a *= float64(g.Y) / 255
			}
			c := color.NRGBAModel.Convert(init.At(ib.Min.X+x, ib.Min.Y+y)).(color.NRGBA)
			px := row[4*x : 4*x+4 : 4*x+4]
			for k, v := range [3]uint8{c.R, c.G, c.B} {
				px[k] = uint8(math.Round((1-a)*float64(v) + a*float64(px[k])))
			}
			px[3] = 255
		}
	}
}
