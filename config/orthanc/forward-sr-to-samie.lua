-- Orthanc auto-forwarding of drawings (structured reports, presentation states) to the samie node.
-- Tested on Orthanc 1.10.1 (Debian) by tests/test_prompted_serve.py and tests/test_viewer.py.
--
-- Every SR or presentation state that Orthanc stores (DICOM C-STORE, STOW-RS from a viewer such as OHIF, REST upload) is
-- sent by C-STORE to the DICOM modality named "samie" in the Orthanc configuration ("DicomModalities"),
-- unless it comes from the node itself:
--   * its Manufacturer (0008,0070) is one the node writes (the node's [output] manufacturer,
--     "samie-node" by default), or
--   * it arrived over DICOM from the node's calling AE title (SAMIE_NODE by default, or the node's
--     [send] calling_ae_title).
-- Either test alone stops the loop node -> PACS -> node; both together keep working if one of the two
-- is configured differently. Edit the three tables below to match the site.
--
-- Enable it with  "LuaScripts": ["/path/to/forward-sr-to-samie.lua"]  in the Orthanc JSON config.

local TARGET_MODALITY = 'samie'

local SR_CLASSES = {
  ['1.2.840.10008.5.1.4.1.1.88.22'] = true, -- Enhanced SR
  ['1.2.840.10008.5.1.4.1.1.88.33'] = true, -- Comprehensive SR
  ['1.2.840.10008.5.1.4.1.1.88.34'] = true, -- Comprehensive 3D SR
  ['1.2.840.10008.5.1.4.1.1.88.35'] = true, -- Extensible SR
  ['1.2.840.10008.5.1.4.1.1.11.1'] = true, -- Grayscale Softcopy Presentation State
  ['1.2.840.10008.5.1.4.1.1.11.2'] = true, -- Color Softcopy Presentation State
  ['1.2.840.10008.5.1.4.1.1.11.3'] = true, -- Pseudo-Color Softcopy Presentation State
}

local NODE_MANUFACTURERS = { ['samie-node'] = true }
local NODE_AE_TITLES = { ['SAMIE_NODE'] = true }

local function trim(value)
  if value == nil then
    return ''
  end
  return (string.gsub(tostring(value), '^%s*(.-)%s*$', '%1'))
end

function OnStoredInstance(instanceId, tags, metadata, origin)
  -- "tags" is the instance's simplified DICOM (keys are tag keywords); "metadata" holds Orthanc's own
  -- (SopClassUid, RemoteAET, Origin, ...); "origin" the request: RequestOrigin ("DicomProtocol",
  -- "RestApi", "Plugins", "Lua"), RemoteAet, CalledAet, RemoteIp, Username.
  local sopClass = trim(tags['SOPClassUID'])
  if sopClass == '' and metadata ~= nil then
    sopClass = trim(metadata['SopClassUid'])
  end
  if not SR_CLASSES[sopClass] then
    return
  end

  local manufacturer = trim(tags['Manufacturer'])
  if NODE_MANUFACTURERS[manufacturer] then
    print('samie forward: skipping ' .. instanceId .. ' written by the node (Manufacturer "' .. manufacturer .. '")')
    return
  end

  local requestOrigin = ''
  local remoteAet = ''
  if origin ~= nil then
    requestOrigin = trim(origin['RequestOrigin'])
    remoteAet = trim(origin['RemoteAet'])
  end
  if requestOrigin == 'DicomProtocol' and NODE_AE_TITLES[remoteAet] then
    print('samie forward: skipping ' .. instanceId .. ' sent by the node (calling AE "' .. remoteAet .. '")')
    return
  end

  print('samie forward: sending ' .. instanceId .. ' (' .. sopClass .. ', from ' .. requestOrigin ..
        ' ' .. remoteAet .. ') to modality "' .. TARGET_MODALITY .. '"')
  SendToModality(instanceId, TARGET_MODALITY)
end
