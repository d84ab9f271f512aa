package image

import (
	"maps"
	"slices"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// fillInspect copies into img what inspect shows of the config besides the
// run settings: labels, ports, volumes, stop signal, platform fields,
// history and the layer digests (bottom first).
func fillInspect(img *Image, cfg *v1.ConfigFile, layers []v1.Descriptor) {
	img.Labels = cfg.Config.Labels
	img.ExposedPorts = slices.Sorted(maps.Keys(cfg.Config.ExposedPorts))
	img.Volumes = slices.Sorted(maps.Keys(cfg.Config.Volumes))
	img.StopSignal = cfg.Config.StopSignal
	img.OS, img.Architecture, img.Variant = cfg.OS, cfg.Architecture, cfg.Variant
	img.History = nil
	for _, h := range cfg.History {
		img.History = append(img.History, History{CreatedBy: h.CreatedBy, EmptyLayer: h.EmptyLayer})
	}
	img.Layers = nil
	for i, l := range layers {
		d := l.Digest
		if d == (v1.Hash{}) && i < len(cfg.RootFS.DiffIDs) {
			d = cfg.RootFS.DiffIDs[i]
		}
		img.Layers = append(img.Layers, d.String())
	}
}
